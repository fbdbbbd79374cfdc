"""Building blocks shared by every encoder architecture."""
