"""Pose estimator plugins: COCO-18 body keypoints for images."""
from . import files, mediapipe_pose  # noqa: F401
