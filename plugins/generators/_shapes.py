"""Feature-map geometry of the built-in generators, shared by their cheap config modules (which
check a size before anything is built) and their Keras model modules."""
from __future__ import annotations


def start_shape(image_size: tuple[int, int]) -> tuple[int, int, int]:
    """Returns ``(h0, w0, k)``: the generator's first feature map and its number of doublings,
    halving until the larger side is 8 (8x8 for 128x128 as in the reference, 8x4 for 128x64
    and 256x128). Raises ValueError if the size does not allow it."""
    h, w = (int(v) for v in image_size)
    k = 0
    while max(h, w) // 2 ** k > 8 and h % 2 ** (k + 1) == 0 and w % 2 ** (k + 1) == 0:
        k += 1
    if k < 2 or max(h, w) // 2 ** k != 8:
        raise ValueError(f"image size {h}x{w} does not fit a DCGAN; use sides whose larger one is "
                         "8 x a power of two, both divisible by the same power (e.g. 64x32, "
                         "128x64, 256x128, 128x128)")
    return h // 2 ** k, w // 2 ** k, k


def unet_depth(image_size: tuple[int, int], depth: int | None = None) -> int:
    """Returns the number of U-Net levels (stride-2 halvings) for ``image_size`` (height, width).

    ``depth`` None: halve while both sides stay whole numbers, until the smaller side is 1 (at
    most 8 levels): 256x128 -> 7 (innermost 2x1), 128x64 -> 6, 64x32 -> 5, 32x16 -> 4 (2x1
    innermost each time); 96x48 -> 4 (6x3). A given ``depth`` is checked. Raises ValueError
    when the sides are not divisible by ``2**depth`` or allow fewer than 3 levels.
    """
    h, w = (int(v) for v in image_size)
    if depth is None:
        depth = 0
        while depth < 8 and h % 2 ** (depth + 1) == 0 and w % 2 ** (depth + 1) == 0:
            depth += 1
    if depth < 3:
        raise ValueError(f"image size {h}x{w} allows only {depth} U-Net levels; use sides divisible "
                         "by 8 or more (e.g. 64x32, 128x64, 256x128)")
    if h % 2 ** depth or w % 2 ** depth:
        raise ValueError(f"image size {h}x{w} is not divisible by 2**{depth}; use sides divisible by "
                         f"{2 ** depth} or a smaller depth")
    return depth
