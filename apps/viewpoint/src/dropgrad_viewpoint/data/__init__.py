"""Data: MATLAB file reading, the ObjectNet3D layout, and the procedural ObjectNet3D-format set."""
