"""GPT-2 pre-training with FOCUS / AdamW / Signum (paper Sec. 4, Fig. 3)."""
