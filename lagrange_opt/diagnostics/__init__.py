"""What a step reports: step results, KKT residuals and logging scalars."""
