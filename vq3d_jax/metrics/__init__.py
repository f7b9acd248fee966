"""Evaluation metrics over whole splits: FID, KID and Inception Score (`fid`, `evaluator`)."""
