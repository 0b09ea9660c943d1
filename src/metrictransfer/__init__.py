"""metrictransfer."""
