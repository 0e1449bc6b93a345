"""Small, deterministic FF++ (with its DFD part) and Celeb-DF-v2 samples from scikit-image's astronaut.

The one real face that ships offline is filmed by a virtual moving camera (the reals) and
edited in the face region only with four crude stand-ins for the FF++ methods (the fakes), so
demos, tests, benchmarks and cross-dataset protocols get data with each dataset's real layout
and real, local forgery artefacts.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from lrerr_tools.datasets.celebdf import TEST_LIST
from lrerr_tools.datasets.ffpp import DFD_METHOD
from lrerr_tools.errors import LrerrError

METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")

# Measured by eye on astronaut() (512x512): brow-to-chin, cheek-to-cheek box, as a detector
# would report it; the other points are the face ellipse, mouth and nose-mouth region.
FACE_BOX = (178, 76, 268, 180)
_FACE_CENTRE = (223.0, 128.0)
_FACE_AXES = (41.0, 50.0)
_MOUTH = (224.0, 146.0)
_LOWER_FACE = (224.0, 140.0)
_LOWER_FACE_AXES = (27.0, 24.0)

# DFD and Celeb-DF were made with autoencoder face swaps, which the Deepfakes edit imitates.
_SWAP_METHOD = "Deepfakes"
# A few of DFD's real scene names, so sample video names read like DFD's.
_DFD_SCENES = (
    "walking_down_street_outside_angry",
    "kitchen_pan",
    "talking_against_wall",
    "podium_speech_happy",
)

# Camera paths are defined in seconds at this rate, so a short clip is the prefix of a longer
# one with the same seed and motion speed does not depend on the clip length.
_PATH_FPS = 25.0

_Edit = Callable[[np.ndarray, np.random.Generator, float, float], tuple[np.ndarray, np.ndarray]]


def astronaut_rgb() -> np.ndarray:
    """The 512x512 RGB astronaut from scikit-image (the face is at FACE_BOX)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise LrerrError(
            "scikit-image is needed for the synthetic sample: pip install 'lrerr-tools[dev]'"
        ) from exc
    return np.ascontiguousarray(data.astronaut()[..., :3])


def write_video(
    path: str | Path,
    frames_rgb: list[np.ndarray] | np.ndarray,
    fps: float = 25.0,
    codec: str = "mp4v",
) -> Path:
    """Write uint8 RGB (H,W,3) or grayscale (H,W) frames with OpenCV; returns the path."""
    path = Path(path)
    try:
        frames = np.asarray(frames_rgb)
    except ValueError as exc:
        raise LrerrError(f"{path}: all frames must have the same shape") from exc
    colour = frames.ndim == 4
    if (
        len(frames) == 0
        or frames.dtype != np.uint8
        or frames.ndim not in (3, 4)
        or (colour and frames.shape[-1] != 3)
    ):
        raise LrerrError(
            f"{path}: frames must be a non-empty uint8 stack of (H,W,3) RGB or (H,W) grayscale "
            f"images, got shape {frames.shape} dtype {frames.dtype}"
        )
    if len(codec) != 4:
        raise LrerrError(
            f"{path}: codec must be a four-character code such as 'mp4v', not {codec!r}"
        )
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        # The mp4v and MJPG encoders silently drop the odd row/column.
        raise LrerrError(f"{path}: frame width and height must be even, got {width}x{height}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*codec), float(fps), (width, height), isColor=colour
    )
    if not writer.isOpened():
        raise LrerrError(
            f"cannot open a {codec!r} video writer for {path}: this OpenCV has no H.264 encoder, "
            "use codec='mp4v' for .mp4 or 'MJPG' for .avi"
        )
    try:
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if colour else frame)
    finally:
        writer.release()
    return path


def _scaled_face_box(shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    sx, sy = shape[1] / 512, shape[0] / 512
    x0, y0, x1, y1 = FACE_BOX
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def _camera_matrices(
    image_shape: tuple[int, ...], n_frames: int, size: tuple[int, int], seed: int
) -> np.ndarray:
    """(n_frames, 2, 3) affine maps from the image to each frame of the camera path."""
    width, height = size
    x0, y0, x1, y1 = _scaled_face_box(image_shape)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / _PATH_FPS

    def drift(amplitude: float) -> np.ndarray:
        # Two slow sines at unrelated rates look like a hand-held drift, not a loop.
        freqs = rng.uniform(0.08, 0.35, 2)
        phases = rng.uniform(0, 2 * np.pi, 2)
        second = rng.uniform(0.2, 0.5)
        waves = np.sin(2 * np.pi * freqs[0] * t + phases[0])
        waves += second * np.sin(2 * np.pi * freqs[1] * t + phases[1])
        return amplitude * waves / (1 + second)

    face_frac = rng.uniform(0.40, 0.45)
    scale = face_frac * height / (y1 - y0) * (1 + drift(rng.uniform(0.02, 0.05)))
    angle = drift(rng.uniform(1.0, 4.0))
    # Talking-head framing: face a little above centre, off-centre by a per-clip amount.
    tx = width * (0.5 + rng.uniform(-0.06, 0.06)) + drift(rng.uniform(0.03, 0.08) * width)
    ty = height * 0.45 + drift(rng.uniform(0.02, 0.05) * height)

    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]])
    limit = np.array([width, height], dtype=float) - 2
    mats = np.empty((n_frames, 2, 3))
    for i in range(n_frames):
        mat = cv2.getRotationMatrix2D((cx, cy), float(angle[i]), float(scale[i]))
        mat[:, 2] += (tx[i] - cx, ty[i] - cy)
        # Rotation and a wide pan on a small frame could clip the face; nudge it back in.
        pts = corners @ mat.T
        mat[:, 2] += np.maximum(0, 2 - pts.min(0)) + np.minimum(0, limit - pts.max(0))
        mats[i] = mat
    return mats


def _colour_jitter(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng((seed, 1))
    gains = rng.uniform(0.9, 1.1, 3)
    offset = rng.uniform(-12, 12)
    gamma = rng.uniform(0.85, 1.15)
    levels = np.arange(256) / 255
    lut = np.clip(255 * levels[None] ** gamma * gains[:, None] + offset, 0, 255)
    lut = lut.round().astype(np.uint8)
    return lut[np.arange(3), image]


def camera_clip(
    image_rgb: np.ndarray, n_frames: int, size: tuple[int, int] = (320, 240), seed: int = 0
) -> np.ndarray:
    """Film the image with a seeded smooth pan/zoom/roll camera: (n_frames, H, W, 3) uint8."""
    image = _check_rgb(image_rgb)
    if n_frames < 1:
        raise LrerrError(f"n_frames must be at least 1, got {n_frames}")
    width, height = size
    source = _colour_jitter(image, seed)
    return np.stack(
        [
            cv2.warpAffine(
                source,
                mat,
                (width, height),
                flags=cv2.INTER_LINEAR,
                # Reflection keeps the background plausible where a pan runs off the photo.
                borderMode=cv2.BORDER_REFLECT_101,
            )
            for mat in _camera_matrices(image.shape, n_frames, (width, height), seed)
        ]
    )


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise LrerrError(
            f"expected a uint8 (H,W,3) RGB image, got shape {image.shape} dtype {image.dtype}"
        )
    return image


def _ellipse_mask(
    shape: tuple[int, ...],
    centre: tuple[float, float],
    axes: tuple[float, float],
    sigma: float,
) -> np.ndarray:
    mask = np.zeros(shape[:2], np.float32)
    cv2.ellipse(
        mask,
        (round(centre[0]), round(centre[1])),
        (max(1, round(axes[0])), max(1, round(axes[1]))),
        0,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
    )
    return cv2.GaussianBlur(mask, (0, 0), max(sigma, 0.5))


def _face_mask(
    shape: tuple[int, ...], sx: float, sy: float, grow: float, sigma: float
) -> np.ndarray:
    centre = (_FACE_CENTRE[0] * sx, _FACE_CENTRE[1] * sy)
    axes = (_FACE_AXES[0] * sx * grow, _FACE_AXES[1] * sy * grow)
    return _ellipse_mask(shape, centre, axes, sigma)


def _deepfakes(img, rng, sx, sy):
    # Self-blended image: the same face, recoloured and passed through a low-resolution
    # "generator", pasted back slightly misaligned, as in SelfBlendedImages.
    s = (sx + sy) / 2
    src = img * rng.uniform(0.9, 1.1, 3) + rng.uniform(-10, 10, 3)
    mean = src.mean(axis=(0, 1))
    src = (src - mean) * rng.uniform(0.85, 1.15) + mean
    factor = rng.uniform(0.35, 0.6)
    h, w = img.shape[:2]
    small = cv2.resize(src, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
    src = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    centre = (_FACE_CENTRE[0] * sx, _FACE_CENTRE[1] * sy)
    mat = cv2.getRotationMatrix2D(centre, 0.0, rng.uniform(0.98, 1.03))
    mat[:, 2] += rng.uniform(-2, 2, 2) * s
    src = cv2.warpAffine(src, mat, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    jittered = (centre[0] + rng.uniform(-3, 3) * s, centre[1] + rng.uniform(-3, 3) * s)
    grow = rng.uniform(0.9, 1.02, 2)
    axes = (_FACE_AXES[0] * sx * grow[0], _FACE_AXES[1] * sy * grow[1])
    mask = _ellipse_mask(img.shape, jittered, axes, rng.uniform(4, 7) * s)
    return src, mask * rng.uniform(0.85, 1.0)


def _face2face(img, rng, sx, sy):
    # Expression transfer: a smooth displacement field opens/closes the jaw and widens or
    # narrows the smile; the face is then re-rendered (slightly soft, slightly recoloured).
    s = (sx + sy) / 2
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = _MOUTH[0] * sx, _MOUTH[1] * sy
    gx, gy = 24 * sx, 18 * sy
    bump = np.exp(-0.5 * (((xx - mx) / gx) ** 2 + ((yy - my) / gy) ** 2))
    below_mouth = 1 / (1 + np.exp(-(yy - my) / (4 * s)))
    jaw = rng.choice((-1, 1)) * rng.uniform(3, 6) * s
    smile = rng.uniform(-3, 3) * s
    dx = smile * bump * (xx - mx) / gx
    dy = jaw * bump * below_mouth
    # The float64 random draws promote the maps to float64, which remap misreads (NaNs).
    map_x, map_y = (xx - dx).astype(np.float32), (yy - dy).astype(np.float32)
    warped = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    rendered = cv2.GaussianBlur(warped, (0, 0), 0.6 * s) * rng.uniform(0.97, 1.03, 3)
    return rendered, _face_mask(img.shape, sx, sy, 1.0, 5 * s)


def _faceswap(img, rng, sx, sy):
    # Graphics-based swap: another person's (differently coloured, differently sized) face
    # pasted with a hard-ish mask, leaving a visible blending boundary.
    s = (sx + sy) / 2
    h, w = img.shape[:2]
    gains = 1 + rng.uniform(0.08, 0.2, 3) * rng.choice((-1, 1), 3)
    src = img * gains + rng.uniform(-15, 15)
    src = cv2.GaussianBlur(src, (0, 0), rng.uniform(0.5, 1.2) * s)
    centre = (_FACE_CENTRE[0] * sx, _FACE_CENTRE[1] * sy)
    mat = cv2.getRotationMatrix2D(centre, rng.uniform(-3, 3), rng.uniform(1.03, 1.08))
    mat[:, 2] += rng.uniform(-4, 4, 2) * s
    src = cv2.warpAffine(src, mat, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    return src, _face_mask(img.shape, sx, sy, rng.uniform(1.0, 1.05), rng.uniform(1.5, 2.5) * s)


def _neuraltextures(img, rng, sx, sy):
    # Learned-texture re-rendering of the mouth: smoothed, noisy, then over-sharpened there.
    s = (sx + sy) / 2
    edited = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.2, 2.0) * s)
    edited = edited + rng.normal(0, rng.uniform(3, 6), img.shape).astype(np.float32)
    edited = edited + rng.uniform(0.6, 1.2) * (edited - cv2.GaussianBlur(edited, (0, 0), s))
    centre = (_LOWER_FACE[0] * sx, _LOWER_FACE[1] * sy)
    grow = rng.uniform(0.9, 1.1)
    axes = (_LOWER_FACE_AXES[0] * sx * grow, _LOWER_FACE_AXES[1] * sy * grow)
    return edited, _ellipse_mask(img.shape, centre, axes, 4 * s)


_EDITS: dict[str, _Edit] = {
    "Deepfakes": _deepfakes,
    "Face2Face": _face2face,
    "FaceSwap": _faceswap,
    "NeuralTextures": _neuraltextures,
}


def manipulate(image_rgb: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """A still fake: the face region edited in the style of an FF++ method, softly blended back."""
    if method not in _EDITS:
        raise LrerrError(
            f"unknown manipulation method {method!r}; choose from {', '.join(METHODS)}"
        )
    image = _check_rgb(image_rgb)
    sy, sx = image.shape[0] / 512, image.shape[1] / 512
    original = image.astype(np.float32)
    edited, mask = _EDITS[method](original, np.random.default_rng(seed), sx, sy)
    alpha = mask[..., None]
    return np.clip(original * (1 - alpha) + edited * alpha, 0, 255).round().astype(np.uint8)


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def _key(name: str) -> int:
    # Folder names as seed keys keep each dataset's cameras and edits apart from the others'.
    return zlib.crc32(name.encode())


def _film(image: np.ndarray, camera: int, n_frames: int, size) -> np.ndarray:
    # A real and its fakes are filmed with the same camera seed (path, colour and mirroring),
    # so they differ only where the face was edited.
    frames = camera_clip(image, n_frames, size, camera)
    # The hash's low bit is a seeded fair coin, independent of the camera path draws.
    return frames[:, :, ::-1] if camera & 1 else frames


def make_ffpp_sample(
    root: str | Path,
    *,
    n_pairs: int = 3,
    methods: Sequence[str] = METHODS,
    n_frames: int = 40,
    size: tuple[int, int] = (320, 240),
    compression: str = "c23",
    dfd_videos: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny FF++ tree (reals, fakes of every method, split lists) under root.

    Like the real download it also holds DFD: `dfd_videos` actor reals and as many
    DeepFakeDetection fakes (0 for none).
    """
    if n_pairs < 1:
        raise LrerrError(f"n_pairs must be at least 1, got {n_pairs}")
    if dfd_videos < 0:
        raise LrerrError(f"dfd_videos must be at least 0, got {dfd_videos}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise LrerrError(f"unknown manipulation method(s) {unknown}; choose from {list(METHODS)}")
    root = Path(root)
    base = astronaut_rgb()
    pairs = [(f"{2 * k:03d}", f"{2 * k + 1:03d}") for k in range(n_pairs)]

    real_dir = root / "original_sequences" / "youtube" / compression / "videos"
    for video_id in (v for pair in pairs for v in pair):
        camera = _seed(seed, int(video_id))
        write_video(real_dir / f"{video_id}.mp4", _film(base, camera, n_frames, size))

    for method in methods:
        fake_dir = root / "manipulated_sequences" / method / compression / "videos"
        for a, b in pairs:
            for target, source in ((a, b), (b, a)):
                fake = manipulate(base, method, _seed(seed, int(target), int(source), _key(method)))
                frames = _film(fake, _seed(seed, int(target)), n_frames, size)
                write_video(fake_dir / f"{target}_{source}.mp4", frames)

    _write_dfd(root, base, dfd_videos, n_frames, size, compression, seed)

    split_dir = root / "splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    for index, split in enumerate(("train", "val", "test")):
        chosen = [list(pair) for k, pair in enumerate(pairs) if k % 3 == index]
        (split_dir / f"{split}.json").write_text(json.dumps(chosen) + "\n")
    return root


def _write_dfd(
    root: Path,
    base: np.ndarray,
    n_videos: int,
    n_frames: int,
    size: tuple[int, int],
    compression: str,
    seed: int,
) -> None:
    """DFD's actors (01__scene) and their fakes (01_02__scene__CODE) in the FF++ root."""
    real_dir = root / "original_sequences" / "actors" / compression / "videos"
    fake_dir = root / "manipulated_sequences" / DFD_METHOD / compression / "videos"
    dfd_key = _key(DFD_METHOD)
    for k in range(n_videos):
        actor = k + 1
        # Another actor's face, as in DFD; with a single actor that one is not in the sample.
        source = (actor % max(n_videos, 2)) + 1
        scene = _DFD_SCENES[k % len(_DFD_SCENES)]
        camera = _seed(seed, dfd_key, actor)
        write_video(real_dir / f"{actor:02d}__{scene}.mp4", _film(base, camera, n_frames, size))
        edit_seed = _seed(seed, dfd_key, actor, source)
        fake = _film(manipulate(base, _SWAP_METHOD, edit_seed), camera, n_frames, size)
        # DFD fakes end in an 8-character random code; the edit seed is one, in hex.
        write_video(fake_dir / f"{actor:02d}_{source:02d}__{scene}__{edit_seed:08X}.mp4", fake)


def make_celebdf_sample(
    root: str | Path,
    *,
    n_real: int = 3,
    n_fake: int = 3,
    n_frames: int = 40,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> Path:
    """Write a tiny Celeb-DF-v2 tree under root: reals, fakes and List_of_testing_videos.txt.

    A third of the reals are YouTube-real, the rest Celeb-real celebrities id0, id1, ...;
    fake f swaps celebrity i = f mod (number of celebrities) with the next one in clip
    f div (number of celebrities). The last real and the last fake are left out of the test
    list, so they are the adapter's "train" videos.
    """
    if n_real < 2 or n_fake < 2:
        raise LrerrError(
            "n_real and n_fake must each be at least 2 (one for the test list, one left out), "
            f"got {n_real} and {n_fake}"
        )
    root = Path(root)
    base = astronaut_rgb()
    n_youtube = n_real // 3
    n_celeb = n_real - n_youtube

    def celeb_camera(identity: int, clip: int) -> int:
        return _seed(seed, _key("Celeb-real"), identity, clip)

    reals = [(f"YouTube-real/{k:05d}", _seed(seed, _key("YouTube-real"), k)) for k in range(n_youtube)]
    reals += [(f"Celeb-real/id{i}_0000", celeb_camera(i, 0)) for i in range(n_celeb)]
    for name, camera in reals:
        write_video(root / f"{name}.mp4", _film(base, camera, n_frames, size))

    fakes = []
    for f in range(n_fake):
        target, clip = f % n_celeb, f // n_celeb
        source = (target + 1) % n_celeb
        edit_seed = _seed(seed, _key("Celeb-synthesis"), target, source, clip)
        # Filmed like the target's real clip, which for clips past 0000 is not in the sample.
        frames = _film(manipulate(base, _SWAP_METHOD, edit_seed), celeb_camera(target, clip), n_frames, size)
        name = f"Celeb-synthesis/id{target}_id{source}_{clip:04d}"
        write_video(root / f"{name}.mp4", frames)
        fakes.append(name)

    # The official list marks real as 1 and fake as 0.
    lines = [f"1 {name}.mp4" for name, _ in reals[:-1]] + [f"0 {name}.mp4" for name in fakes[:-1]]
    (root / TEST_LIST).write_text("\n".join(lines) + "\n")
    return root
