"""Media input and output: images with Pillow, videos with PyAV, resizing to buckets."""

from tuner_core.media.image import IMAGE_EXTENSIONS, image_size, is_image_file, load_image
from tuner_core.media.resize import area_downscale, resize_to_cover
from tuner_core.media.video import (
    VIDEO_EXTENSIONS,
    VideoInfo,
    VideoReader,
    count_frames,
    frame_files,
    is_video_file,
    probe_video,
    read_frames,
)
from tuner_core.media.write import VideoStream, write_image, write_video

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "VideoReader",
    "VideoStream",
    "area_downscale",
    "count_frames",
    "frame_files",
    "image_size",
    "is_image_file",
    "is_video_file",
    "load_image",
    "probe_video",
    "read_frames",
    "resize_to_cover",
    "write_image",
    "write_video",
]
