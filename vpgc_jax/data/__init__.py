"""Data access for vpgc_jax: dataset readers (`frames`) and landmark heatmaps (`heatmaps`)."""
