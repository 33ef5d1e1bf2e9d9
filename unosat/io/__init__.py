"""Small I/O helpers: atomic writes and raster windows/profiles."""
