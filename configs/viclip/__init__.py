"""ViCLIP (InternVid) experiment configs."""
