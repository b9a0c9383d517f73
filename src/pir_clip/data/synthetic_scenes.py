"""Procedurally drawn aerial (top-down) scenes for the synthetic remote-sensing retrieval benchmark.

Every scene class is three functions, registered in :data:`SCENES` under the class name:

- ``sample(rng) -> dict``: the attributes of one image. Values are JSON-serialisable (str, int, list of
  str, or None where an attribute does not apply, e.g. ``car_colour`` when ``n_cars`` is 0).
- ``draw(canvas, attrs)``: draws what the attributes say onto a :class:`Canvas`.
- ``describe(attrs, phrasing) -> list[str]``: one sentence per caption template (at least
  :data:`CAPTIONS_PER_IMAGE` of them); the caller keeps a random subset.

Vocabulary contract between attributes and captions (the tests parse captions back with it):

- counts live in ``n_*`` keys; a caption states a count as a number word ("three"), a digit ("3") or
  "a single", followed within four words by the counted noun;
- colour words (keys of :data:`PALETTE`) appear only as values of ``*_colour`` / ``*_colours`` keys;
- position words (left/right/top/bottom/center and the synonyms upper/lower/middle/centre) appear only as
  parts of ``*_position`` values, one of :data:`POSITIONS`;
- orientation words (horizontal/vertical/diagonal, also as adverbs) only as ``*_orientation`` values;
- size words only as ``*_size`` (small/large; synonyms tiny/big/huge) or ``river_width`` (narrow/wide/broad)
  values, density words only as the ``density`` value (dense/thick, sparse).

Scenes draw in pixel coordinates derived from fractions of the image side, so every image size works;
objects are drawn in their named palette colour (jittered by ``Difficulty.colour_jitter``, never far enough
to become closer to another palette colour), which lets tests find the colour in the pixels.
"""
import math
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

RGB = Tuple[int, int, int]

# Pairwise distances are >= 78, and colour jitter moves a colour by at most MAX_JITTER per channel
# (<= 35 in RGB distance), so a drawn colour always stays nearest to its own name.
PALETTE: Dict[str, RGB] = {
    "red": (200, 45, 40),
    "white": (235, 235, 230),
    "blue": (40, 85, 200),
    "green": (55, 150, 60),
    "grey": (128, 128, 128),
    "yellow": (230, 205, 55),
    "orange": (230, 130, 35),
    "brown": (125, 80, 45),
    "black": (35, 35, 38),
}
MAX_JITTER = 20

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
             "bottom right")
SIDES = ("left", "right", "top", "bottom")
ORIENTATIONS = ("horizontal", "vertical", "diagonal")
CAPTIONS_PER_IMAGE = 5
EXTRA_KINDS = ("trees", "road", "cars", "houses", "pond")

# Fractions of the image side where an object "at <position>" is centred.
POSITION_XY = {
    "top left": (0.27, 0.27), "top": (0.5, 0.25), "top right": (0.73, 0.27),
    "left": (0.25, 0.5), "center": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.27, 0.73), "bottom": (0.5, 0.75), "bottom right": (0.73, 0.73),
}

# Muted ground colours; each is > 40 away from every palette colour an object on it can take.
GRASS = (88, 128, 62)
ASPHALT = (82, 82, 88)
CONCRETE = (186, 178, 165)
DIRT = (165, 152, 128)
SAND = (222, 200, 152)
MEADOW = (150, 150, 96)
DARK_TREE = (34, 86, 38)
PAINT = (190, 190, 160)  # road and parking markings, deliberately not "white"
WINDSHIELD = (70, 80, 96)


@dataclass(frozen=True)
class Difficulty:
    """Knobs in [0, 1] that make images harder to tell apart.

    noise: per-pixel Gaussian noise and uneven illumination. clutter: small random blobs and lines.
    colour_jitter: how far object and ground colours stray from their named colour. overlap: probability of
    distractor elements borrowed from other classes (trees, a road, cars, houses, a pond), which captions
    do not mention.
    """
    noise: float = 0.3
    clutter: float = 0.3
    colour_jitter: float = 0.3
    overlap: float = 0.3

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"difficulty knob {f.name} must be in [0, 1], got {value}")


DIFFICULTY_PRESETS = {
    "easy": Difficulty(noise=0.1, clutter=0.1, colour_jitter=0.1, overlap=0.0),
    "medium": Difficulty(),
    "hard": Difficulty(noise=0.6, clutter=0.7, colour_jitter=0.7, overlap=0.7),
}


# ----------------------------------------------------------------------------------------------- sampling


def pick(rng: np.random.Generator, options: Sequence, weights: Optional[Sequence[float]] = None):
    """One element of ``options`` as a plain Python value (JSON-safe, unlike numpy scalars)."""
    p = None if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))
    return options[int(rng.choice(len(options), p=p))]


def randint(rng: np.random.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high], both inclusive."""
    return int(rng.integers(low, high + 1))


def sample_extras(rng: np.random.Generator, overlap: float, excluded: Sequence[str]) -> List[str]:
    """Distractor kinds (subset of :data:`EXTRA_KINDS` minus ``excluded``), each present with p = overlap / 2."""
    return [kind for kind in EXTRA_KINDS if kind not in excluded and rng.random() < overlap / 2]


# ----------------------------------------------------------------------------------------------- drawing


def shade(rgb: Sequence[float], factor: float) -> RGB:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in rgb)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], shape (size, size): a random cells x cells grid, bilinearly upsampled."""
    grid = (rng.random((cells, cells), dtype=np.float32) * 2 - 1).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR))


def dot(u: Tuple[float, float], v: Tuple[float, float]) -> float:
    return u[0] * v[0] + u[1] * v[1]


def sub(u: Tuple[float, float], v: Tuple[float, float]) -> Tuple[float, float]:
    return (u[0] - v[0], u[1] - v[1])


def rotate_points(points: Sequence[Tuple[float, float]], angle: float, centre: Tuple[float, float]):
    ca, sa = math.cos(angle), math.sin(angle)
    cx, cy = centre
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


@dataclass
class Band:
    """A long strip (runway, river, road) across the image: centre line through ``centre`` along the unit
    vector ``direction``, sideways offset ``wiggle * sin(2 pi t / period + phase)`` at arc length t."""
    centre: Tuple[float, float]
    direction: Tuple[float, float]
    half_width: float
    wiggle: float = 0.0
    period: float = 1.0
    phase: float = 0.0

    @property
    def normal(self) -> Tuple[float, float]:
        return (-self.direction[1], self.direction[0])

    def offset(self, t: float) -> float:
        return self.wiggle * math.sin(2 * math.pi * t / self.period + self.phase)

    def point(self, t: float, side: float = 0.0) -> Tuple[float, float]:
        """The point at arc length t (0 = centre), ``side`` pixels off the centre line."""
        (cx, cy), (dx, dy), (nx, ny) = self.centre, self.direction, self.normal
        s = self.offset(t) + side
        return (cx + t * dx + s * nx, cy + t * dy + s * ny)

    def polygon(self, size: int, extra_width: float = 0.0, steps: int = 32):
        reach = 0.8 * size  # long enough to leave the image even along a diagonal
        ts = np.linspace(-reach, reach, steps)
        half = self.half_width + extra_width
        return [self.point(t, -half) for t in ts] + [self.point(t, half) for t in ts[::-1]]

    def distance(self, p: Tuple[float, float]) -> float:
        """Approximate distance from p to the centre line (exact when the band is straight)."""
        relative = sub(p, self.centre)
        return abs(dot(relative, self.normal) - self.offset(dot(relative, self.direction)))


class Canvas:
    """A square RGB image being drawn, with the scene's random stream, difficulty and distractor list."""

    def __init__(self, size: int, rng: np.random.Generator, difficulty: Difficulty, extras: Sequence[str] = ()):
        self.size = size
        self.rng = rng
        self.difficulty = difficulty
        self.extras = list(extras)
        self.image = Image.new("RGB", (size, size))
        self.draw = ImageDraw.Draw(self.image)

    def px(self, fraction: float) -> float:
        return fraction * self.size

    def named(self, name: str) -> RGB:
        """Palette colour ``name``, jittered per channel by at most MAX_JITTER (so it keeps its name)."""
        if name not in PALETTE:
            raise KeyError(f"unknown colour {name!r}; palette: {sorted(PALETTE)}")
        amount = MAX_JITTER * self.difficulty.colour_jitter
        return tuple(int(np.clip(c + self.rng.uniform(-amount, amount), 0, 255)) for c in PALETTE[name])

    def tone(self, rgb: RGB, spread: float = 25.0) -> RGB:
        """A ground colour varied by colour jitter, mostly in brightness so greys stay grey; unlike named
        colours it may drift freely."""
        amount = spread * (0.3 + self.difficulty.colour_jitter)
        light = self.rng.uniform(-amount, amount)
        return tuple(int(np.clip(c + light + self.rng.uniform(-amount, amount) / 3, 0, 255)) for c in rgb)

    def set_array(self, array: np.ndarray) -> None:
        self.image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
        self.draw = ImageDraw.Draw(self.image)

    def fill_ground(self, rgb: RGB, variation: float = 14.0, cells: int = 6) -> None:
        """Cover the image with ``rgb`` plus soft patches of lighter and darker ground."""
        base = np.asarray(self.tone(rgb), dtype=np.float32)
        patches = smooth_noise(self.rng, self.size, cells)[..., None] * variation
        self.set_array(base + patches)

    def band(self, orientation: str, half_width: float, offset: float = 0.0, wiggle: float = 0.0) -> Band:
        """A :class:`Band` through the image centre (shifted ``offset`` px sideways) along ``orientation``."""
        if orientation == "horizontal":
            direction = (1.0, 0.0)
        elif orientation == "vertical":
            direction = (0.0, 1.0)
        elif orientation == "diagonal":
            sign = 1.0 if self.rng.random() < 0.5 else -1.0
            direction = (math.sqrt(0.5), sign * math.sqrt(0.5))
        else:
            raise ValueError(f"unknown orientation {orientation!r}; expected one of {ORIENTATIONS}")
        nx, ny = -direction[1], direction[0]
        centre = (self.size / 2 + offset * nx, self.size / 2 + offset * ny)
        return Band(centre, direction, half_width, wiggle, period=self.px(self.rng.uniform(0.7, 1.3)),
                    phase=self.rng.uniform(0, 2 * math.pi))

    def scatter(self, n: int, box: Tuple[float, float, float, float], min_dist: float,
                allowed: Callable[[Tuple[float, float]], bool] = lambda p: True) -> List[Tuple[float, float]]:
        """``n`` points in ``box`` (x0, y0, x1, y1), spaced by ``min_dist`` and ``allowed`` where possible.

        Always returns exactly n points: when rejection sampling runs out of tries, the remaining points
        ignore spacing (objects may then touch), because the recorded count must match what is drawn.
        """
        x0, y0, x1, y1 = box
        points: List[Tuple[float, float]] = []
        for _ in range(80 * n):
            if len(points) == n:
                break
            p = (self.rng.uniform(x0, x1), self.rng.uniform(y0, y1))
            if allowed(p) and all(math.dist(p, q) >= min_dist for q in points):
                points.append(p)
        while len(points) < n:
            points.append((self.rng.uniform(x0, x1), self.rng.uniform(y0, y1)))
        return points

    # Shapes shared by several scenes -------------------------------------------------------------------

    def tree(self, centre, radius: float, rgb: RGB) -> None:
        x, y = centre
        self.draw.ellipse([x - radius + 1, y - radius + 1, x + radius + 1, y + radius + 1], fill=(30, 40, 25))
        self.draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=rgb)

    def car(self, centre, angle: float, rgb: RGB, length: Optional[float] = None) -> None:
        length = length or self.px(0.12)
        width = 0.5 * length
        body = [(-length / 2, -width / 2), (length / 2, -width / 2), (length / 2, width / 2), (-length / 2, width / 2)]
        glass = [(0.12 * length, -width / 2 + 1), (0.3 * length, -width / 2 + 1),
                 (0.3 * length, width / 2 - 1), (0.12 * length, width / 2 - 1)]
        self.draw.polygon(rotate_points(body, angle, centre), fill=rgb)
        self.draw.polygon(rotate_points(glass, angle, centre), fill=WINDSHIELD)

    def house(self, centre, width: float, depth: float, roof: RGB, angle: float = 0.0) -> None:
        """A rectangular roof seen from above: one half of the gable in shadow."""
        w, d = width / 2, depth / 2
        shadow = [(-w + 2, -d + 2), (w + 2, -d + 2), (w + 2, d + 2), (-w + 2, d + 2)]
        self.draw.polygon(rotate_points(shadow, angle, centre), fill=(45, 50, 40))
        self.draw.polygon(rotate_points([(-w, -d), (w, -d), (w, d), (-w, d)], angle, centre), fill=roof)
        self.draw.polygon(rotate_points([(-w, 0), (w, 0), (w, d), (-w, d)], angle, centre), fill=shade(roof, 0.78))

    def pond(self, centre, radius: float, rgb: RGB) -> List[Tuple[float, float]]:
        """An irregular round water body; returns its outline."""
        k = np.arange(1, 4)
        amps = self.rng.uniform(0.05, 0.14, size=3)
        phases = self.rng.uniform(0, 2 * math.pi, size=3)
        outline = []
        for theta in np.linspace(0, 2 * math.pi, 40, endpoint=False):
            r = radius * (1 + float(np.sum(amps * np.sin(k * theta + phases))))
            outline.append((centre[0] + r * math.cos(theta), centre[1] + r * math.sin(theta)))
        self.draw.polygon(outline, fill=rgb)
        return outline

    def draw_extras(self) -> None:
        """Distractors from other classes, drawn under the scene's own objects so counts stay visible."""
        s = self.size
        for kind in self.extras:
            if kind == "trees":
                for x, y in self.scatter(randint(self.rng, 3, 8), (0, 0, s, s), self.px(0.08)):
                    self.tree((x, y), self.px(self.rng.uniform(0.03, 0.05)), self.tone(DARK_TREE, 10))
            elif kind == "road":
                road = self.band(pick(self.rng, ORIENTATIONS), self.px(0.025), self.px(self.rng.uniform(-0.35, 0.35)))
                self.draw.polygon(road.polygon(s), fill=self.tone(ASPHALT, 10))
            elif kind == "cars":
                for p in self.scatter(randint(self.rng, 1, 3), (0.1 * s, 0.1 * s, 0.9 * s, 0.9 * s), self.px(0.15)):
                    self.car(p, self.rng.uniform(0, math.pi), self.tone((50, 50, 56), 8), self.px(0.09))
            elif kind == "houses":
                for p in self.scatter(randint(self.rng, 1, 3), (0.1 * s, 0.1 * s, 0.9 * s, 0.9 * s), self.px(0.18)):
                    self.house(p, self.px(0.11), self.px(0.08), self.tone((160, 100, 80), 10))
            elif kind == "pond":
                centre = (self.rng.uniform(0.2, 0.8) * s, self.rng.uniform(0.2, 0.8) * s)
                self.pond(centre, self.px(0.08), self.tone((50, 72, 110), 10))
            else:
                raise ValueError(f"unknown extra kind {kind!r}; expected one of {EXTRA_KINDS}")

    def finish(self) -> Image.Image:
        """Clutter, uneven illumination and sensor noise on top of the drawn scene."""
        s, d = self.size, self.difficulty
        for _ in range(int(round(d.clutter * 30 * (s / 96) ** 2))):
            x, y = self.rng.uniform(0, s), self.rng.uniform(0, s)
            under = self.image.getpixel((min(int(x), s - 1), min(int(y), s - 1)))
            rgb = shade(under, self.rng.uniform(0.55, 1.35))
            r = self.rng.uniform(0.5, 2.0) * s / 96
            if self.rng.random() < 0.7:
                self.draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)
            else:
                angle = self.rng.uniform(0, math.pi)
                length = self.rng.uniform(3, 10) * s / 96
                self.draw.line([(x, y), (x + length * math.cos(angle), y + length * math.sin(angle))], fill=rgb)
        array = np.asarray(self.image, dtype=np.float32)
        light = 1.0 + 0.15 * d.noise * smooth_noise(self.rng, s, 3)[..., None]
        grain = self.rng.normal(0.0, 18.0 * d.noise, size=array.shape).astype(np.float32)
        return Image.fromarray(np.clip(array * light + grain, 0, 255).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------------ phrasing


class Phrasing:
    """Random wording choices for caption templates: synonyms, numbers as words or digits, positions."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, *options: str) -> str:
        return options[int(self.rng.integers(len(options)))]

    def number(self, n: int) -> str:
        return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) and self.rng.random() < 0.5 else str(n)

    def count(self, n: int, singular: str, plural: str) -> str:
        """"three white planes", "3 white planes", "one white plane", "a single white plane"."""
        if n == 1:
            return self.pick(f"one {singular}", f"1 {singular}", f"a single {singular}")
        return f"{self.number(n)} {plural}"

    def counted(self, n: int, nouns: Sequence[Tuple[str, str]], adjectives: str = "") -> str:
        """``n`` of a random synonym from ``nouns`` ((singular, plural) pairs), adjectives first."""
        singular, plural = nouns[int(self.rng.integers(len(nouns)))]
        prefix = f"{adjectives} " if adjectives else ""
        return self.count(n, prefix + singular, prefix + plural)

    @staticmethod
    def be(n: int) -> str:
        return "is" if n == 1 else "are"

    def position(self, position: str) -> str:
        """"in the top left corner", "at the upper left", "on the left side", "in the middle", ..."""
        if position == "center":
            return self.pick("in the center", "in the middle", "in the centre", "at the center")
        words = position.split()
        if len(words) == 2:
            vertical = {"top": self.pick("top", "upper"), "bottom": self.pick("bottom", "lower")}[words[0]]
            return self.pick(f"in the {vertical} {words[1]} corner", f"at the {vertical} {words[1]}")
        if position in ("left", "right"):
            return self.pick(f"on the {position}", f"on the {position} side", f"at the {position}")
        part = "upper" if position == "top" else "lower"
        return self.pick(f"at the {position}", f"near the {position}", f"in the {part} part")

    def size(self, size: str) -> str:
        return self.pick("small", "tiny") if size == "small" else self.pick("large", "big", "huge")


def with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def sentence(text: str) -> str:
    """Capitalise and terminate a caption."""
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


# -------------------------------------------------------------------------------------------- the scenes
# Each class: sample (attributes), draw, describe (one sentence per template).

PLANE_COLOURS = ("white", "grey", "blue", "red", "yellow")
CAR_COLOURS = ("red", "white", "blue", "yellow", "black")
TANK_COLOURS = ("white", "green", "blue", "red", "yellow")
ROOF_COLOURS = ("red", "brown", "grey", "blue", "orange")
FIELD_COLOURS = ("green", "yellow", "brown", "orange")
UMBRELLA_COLOURS = ("red", "yellow", "blue", "orange", "white")
WATER_COLOURS = ("blue", "brown")
POND_COLOURS = ("blue", "green", "brown")
BRIDGE_COLOURS = ("grey", "white", "red")
CANOPY_COLOURS = ("green", "yellow", "orange")
SAND_COLOURS = ("yellow", "orange", "brown")

PLANE_NOUNS = (("plane", "planes"), ("airplane", "airplanes"), ("aircraft", "aircraft"), ("jet", "jets"))
CAR_NOUNS = (("car", "cars"), ("vehicle", "vehicles"))
TANK_NOUNS = (("storage tank", "storage tanks"), ("tank", "tanks"), ("oil tank", "oil tanks"))
HOUSE_NOUNS = (("house", "houses"), ("building", "buildings"), ("home", "homes"))
FIELD_NOUNS = (("field", "fields"), ("plot", "plots"))
BOAT_NOUNS = (("boat", "boats"), ("ship", "ships"))
UMBRELLA_NOUNS = (("umbrella", "umbrellas"), ("parasol", "parasols"))
DIAMOND_NOUNS = (("baseball field", "baseball fields"), ("baseball diamond", "baseball diamonds"))


def sample_airport(rng):
    return {"n_planes": randint(rng, 1, 6), "plane_colour": pick(rng, PLANE_COLOURS, (4, 1.5, 1.5, 1.5, 1.5)),
            "plane_size": pick(rng, ("small", "large")), "runway_orientation": pick(rng, ORIENTATIONS)}


def draw_plane(cv: Canvas, centre, length: float, angle: float, rgb: RGB) -> None:
    L = length
    fuselage = [(-L / 2, -0.09 * L), (L / 2, -0.09 * L), (L / 2 + 0.05 * L, 0), (L / 2, 0.09 * L), (-L / 2, 0.09 * L)]
    wings = [(0.12 * L, 0), (-0.12 * L, -0.47 * L), (-0.26 * L, -0.47 * L), (-0.1 * L, 0),
             (-0.26 * L, 0.47 * L), (-0.12 * L, 0.47 * L)]
    tail = [(-0.36 * L, 0), (-0.48 * L, -0.18 * L), (-0.52 * L, -0.18 * L), (-0.5 * L, 0),
            (-0.52 * L, 0.18 * L), (-0.48 * L, 0.18 * L)]
    shadow_centre = (centre[0] + 0.08 * L, centre[1] + 0.08 * L)
    for points, fill, at in ((wings, (50, 55, 45), shadow_centre), (fuselage, rgb, centre), (wings, rgb, centre),
                             (tail, rgb, centre)):
        cv.draw.polygon(rotate_points(points, angle, at), fill=fill)


def draw_airport(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground(GRASS)
    corner = (cv.rng.uniform(0.05, 0.6) * s, cv.rng.uniform(0.05, 0.6) * s)
    cv.draw.rectangle([corner, (corner[0] + 0.3 * s, corner[1] + 0.18 * s)], fill=cv.tone(CONCRETE, 8))
    runway = cv.band(a["runway_orientation"], cv.px(0.065), cv.px(cv.rng.uniform(-0.15, 0.15)))
    cv.draw.polygon(runway.polygon(s), fill=cv.tone(ASPHALT, 8))
    for t in np.arange(-0.8 * s, 0.8 * s, cv.px(0.12)):
        cv.draw.line([runway.point(t), runway.point(t + cv.px(0.06))], fill=PAINT, width=1)
    cv.draw_extras()
    length = cv.px(0.12 if a["plane_size"] == "small" else 0.18)
    clear = runway.half_width + 0.55 * length
    margin = 0.6 * length
    for p in cv.scatter(a["n_planes"], (margin, margin, s - margin, s - margin), 1.05 * length,
                        lambda p: runway.distance(p) > clear):
        draw_plane(cv, p, length, cv.rng.uniform(0, 2 * math.pi), cv.named(a["plane_colour"]))


def describe_airport(a: dict, ph: Phrasing) -> List[str]:
    n, colour, o = a["n_planes"], a["plane_colour"], a["runway_orientation"]

    def planes(adjectives=colour):
        return ph.counted(n, PLANE_NOUNS, adjectives)

    return [
        f"There {ph.be(n)} {planes()} parked at the airport.",
        f"An airport with {planes()} near a {o} runway.",
        f"{planes()} {ph.be(n)} parked beside a {o} runway.",
        f"A {o} runway and {planes()} at an {ph.pick('airport', 'airfield')}.",
        f"This airport has {planes(ph.size(a['plane_size']) + ' ' + colour)}.",
        f"The runway runs {o}ly and {planes(ph.size(a['plane_size']))} {ph.be(n)} nearby.",
        f"Aerial view of an airport with {planes()}.",
    ]


def sample_parkinglot(rng):
    return {"n_cars": randint(rng, 2, 12), "car_colour": pick(rng, CAR_COLOURS),
            "row_orientation": pick(rng, ("horizontal", "vertical"))}


def draw_parkinglot(cv: Canvas, a: dict) -> None:
    cv.fill_ground(ASPHALT, variation=8)
    rows, per_row = (0.2, 0.5, 0.8), 8
    pitch = 0.8 / per_row
    horizontal = a["row_orientation"] == "horizontal"
    slots = []
    for r in rows:
        for i in range(per_row + 1):
            along = 0.1 + i * pitch
            line = [(along, r - 0.08), (along, r + 0.08)]
            cv.draw.line([(cv.px(x), cv.px(y)) if horizontal else (cv.px(y), cv.px(x)) for x, y in line],
                         fill=PAINT, width=1)
            if i < per_row:
                slots.append((along + pitch / 2, r))
    cv.draw_extras()
    colour = a["car_colour"]
    # Cars stand across the row, nose alternating, like real parking bays.
    for k in cv.rng.choice(len(slots), size=a["n_cars"], replace=False):
        x, y = slots[int(k)]
        centre = (cv.px(x), cv.px(y)) if horizontal else (cv.px(y), cv.px(x))
        angle = (math.pi / 2 if horizontal else 0.0) + (math.pi if cv.rng.random() < 0.5 else 0.0)
        cv.car(centre, angle, cv.named(colour), cv.px(0.13))


def describe_parkinglot(a: dict, ph: Phrasing) -> List[str]:
    n, colour, o = a["n_cars"], a["car_colour"], a["row_orientation"]

    def cars():
        return ph.counted(n, CAR_NOUNS, colour)

    return [
        f"There {ph.be(n)} {cars()} in the parking lot.",
        f"A parking lot with {cars()} parked in {o} rows.",
        f"{cars()} {ph.be(n)} parked in a {ph.pick('parking lot', 'car park')}.",
        f"Aerial image of a parking lot where {cars()} {ph.be(n)} parked.",
        f"The {o} parking rows hold {cars()}.",
        f"Some parking spaces are occupied by {cars()}.",
        f"{cars()} {ph.be(n)} lined up {o}ly in the parking area.",
    ]


def sample_storagetanks(rng):
    return {"n_tanks": randint(rng, 1, 8), "tank_colour": pick(rng, TANK_COLOURS, (4, 1.5, 1.5, 1.5, 1.5)),
            "tank_size": pick(rng, ("small", "large")), "tank_position": pick(rng, SIDES + ("center",))}


def draw_storagetanks(cv: Canvas, a: dict) -> None:
    cv.fill_ground(DIRT)
    cv.draw_extras()
    radius = cv.px(0.055 if a["tank_size"] == "small" else 0.085)
    region = {"left": (0.03, 0.03, 0.5, 0.97), "right": (0.5, 0.03, 0.97, 0.97), "top": (0.03, 0.03, 0.97, 0.5),
              "bottom": (0.03, 0.5, 0.97, 0.97), "center": (0.2, 0.2, 0.8, 0.8)}[a["tank_position"]]
    x0, y0, x1, y1 = (cv.px(v) for v in region)
    cell = 2.25 * radius
    cols, rows = max(1, int((x1 - x0) // cell)), max(1, int((y1 - y0) // cell))
    # Cells fill from the region's middle outwards so a few tanks sit where the position word says.
    mid = ((cols - 1) / 2, (rows - 1) / 2)
    cells = sorted(((c, r) for c in range(cols) for r in range(rows)),
                   key=lambda cr: (cr[0] - mid[0]) ** 2 + (cr[1] - mid[1]) ** 2 + 0.01 * cv.rng.random())
    cells = cells[:a["n_tanks"]]
    while len(cells) < a["n_tanks"]:  # region too small for the count: stack extra tanks on top
        cells.append(cells[len(cells) % len(cells)])
    gx, gy = x0 + (x1 - x0 - cols * cell) / 2, y0 + (y1 - y0 - rows * cell) / 2
    centres = [(gx + (c + 0.5) * cell, gy + (r + 0.5) * cell) for c, r in cells]
    for (x, y), (u, v) in zip(centres, centres[1:]):
        cv.draw.line([(x, y), (u, v)], fill=(110, 108, 100), width=1)
    rgb = cv.named(a["tank_colour"])
    for x, y in centres:
        cv.draw.ellipse([x - radius + 2, y - radius + 2, x + radius + 2, y + radius + 2], fill=(70, 66, 56))
        cv.draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=rgb, outline=shade(rgb, 0.7))
        lid = 0.55 * radius
        cv.draw.ellipse([x - lid, y - lid, x + lid, y + lid], outline=shade(rgb, 0.85))


def describe_storagetanks(a: dict, ph: Phrasing) -> List[str]:
    n, colour, pos = a["n_tanks"], a["tank_colour"], a["tank_position"]

    def tanks(adjectives=colour):
        return ph.counted(n, TANK_NOUNS, adjectives)

    return [
        f"There {ph.be(n)} {tanks()} {ph.position(pos)}.",
        f"{tanks()} {ph.be(n)} located {ph.position(pos)}.",
        f"An industrial area with {tanks(ph.size(a['tank_size']) + ' ' + colour)}.",
        f"{tanks()} can be seen {ph.position(pos)} of the image.",
        f"Aerial view of {tanks(ph.size(a['tank_size']))} {ph.position(pos)}.",
        f"{tanks()} {ph.be(n)} built on bare ground.",
    ]


def sample_residential(rng):
    return {"n_houses": randint(rng, 3, 12), "roof_colour": pick(rng, ROOF_COLOURS),
            "road_orientation": pick(rng, ("horizontal", "vertical"))}


def draw_residential(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground(GRASS)
    horizontal = a["road_orientation"] == "horizontal"
    road_at = cv.rng.uniform(0.42, 0.58)
    road = cv.band(a["road_orientation"], cv.px(0.045), cv.px(road_at - 0.5))
    cv.draw.polygon(road.polygon(s), fill=cv.tone(ASPHALT, 8))
    cv.draw_extras()
    slots = [(along, road_at + side * gap) for along in (0.1, 0.28, 0.46, 0.64, 0.82)
             for side in (-1, 1) for gap in (0.14, 0.33)]
    chosen = set(int(k) for k in cv.rng.choice(len(slots), size=a["n_houses"], replace=False))
    roof = cv.named(a["roof_colour"])
    for k, (along, across) in enumerate(slots):
        centre = (cv.px(along), cv.px(across)) if horizontal else (cv.px(across), cv.px(along))
        if k in chosen:
            w, d = cv.px(cv.rng.uniform(0.11, 0.14)), cv.px(cv.rng.uniform(0.08, 0.1))
            cv.house(centre, w, d, roof, 0.0 if horizontal else math.pi / 2)
        elif cv.rng.random() < 0.6:
            cv.tree(centre, cv.px(cv.rng.uniform(0.025, 0.045)), cv.tone(DARK_TREE, 10))


def describe_residential(a: dict, ph: Phrasing) -> List[str]:
    n, colour, o = a["n_houses"], a["roof_colour"], a["road_orientation"]

    def houses(adjectives=""):
        return ph.counted(n, HOUSE_NOUNS, adjectives)

    return [
        f"A residential area with {houses()} with {colour} roofs along a {o} road.",
        f"There {ph.be(n)} {houses()} with {colour} roofs beside a road.",
        f"{houses(colour + '-roofed')} {ph.be(n)} built along the {o} road.",
        f"Houses with {colour} roofs line a {o} street in this residential area.",
        f"Aerial view of {houses()} with {colour} roofs.",
        f"{houses()} and some trees are arranged along a {o} road.",
        f"A neighbourhood of {houses(colour + ' roofed')}.",
    ]


def sample_farmland(rng):
    rows, cols = randint(rng, 2, 3), randint(rng, 2, 4)
    n = rows * cols
    main = pick(rng, FIELD_COLOURS)
    others = [c for c in FIELD_COLOURS if c != main]
    minority = [others[int(i)] for i in rng.choice(len(others), size=randint(rng, 0, 2), replace=False)]
    # The main colour takes a strict majority of fields, so "mostly <main>" is true.
    colours = [main] * (n // 2 + 1) + [minority[i % len(minority)] if minority else main for i in range(n - n // 2 - 1)]
    order = [colours[int(i)] for i in rng.permutation(n)]
    return {"n_fields": n, "field_rows": rows, "field_cols": cols, "main_field_colour": main,
            "field_colours": sorted(set(colours)), "field_layout": order}


def draw_farmland(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground(DIRT)
    cuts = []
    for parts in (a["field_cols"], a["field_rows"]):
        widths = cv.rng.uniform(0.7, 1.3, size=parts)
        cuts.append(np.concatenate([[0.0], np.cumsum(widths) / widths.sum()]) * s)
    xs, ys = cuts
    path = cv.tone((170, 150, 110), 8)
    for k, name in enumerate(a["field_layout"]):
        r, c = divmod(k, a["field_cols"])
        x0, y0, x1, y1 = xs[c], ys[r], xs[c + 1], ys[r + 1]
        rgb = cv.named(name)
        cv.draw.rectangle([x0, y0, x1, y1], fill=rgb)
        furrow, step = shade(rgb, 0.86), max(2, int(round(cv.px(0.035))))
        if cv.rng.random() < 0.5:
            for x in np.arange(x0 + step, x1, step):
                cv.draw.line([(x, y0), (x, y1)], fill=furrow)
        else:
            for y in np.arange(y0 + step, y1, step):
                cv.draw.line([(x0, y), (x1, y)], fill=furrow)
    for x in xs[1:-1]:
        cv.draw.line([(x, 0), (x, s)], fill=path, width=2)
    for y in ys[1:-1]:
        cv.draw.line([(0, y), (s, y)], fill=path, width=2)
    cv.draw_extras()


def join_words(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def describe_farmland(a: dict, ph: Phrasing) -> List[str]:
    n, main, colours = a["n_fields"], a["main_field_colour"], a["field_colours"]
    others = [c for c in colours if c != main]

    def fields_(adjectives=""):
        return ph.counted(n, FIELD_NOUNS, adjectives)

    mixed = (f"Many {main} fields and a few {join_words(others)} ones." if others
             else f"All {ph.number(n)} fields are {main}.")
    return [
        f"Farmland divided into {fields_()}.",
        f"There {ph.be(n)} {fields_()}, most of them {main}.",
        f"A patchwork of {join_words(colours)} fields.",
        f"{fields_()} of farmland, mainly {main}.",
        f"Aerial view of {fields_()} in {join_words(colours)}.",
        mixed,
        f"Farmland with {fields_()} separated by paths.",
    ]


def sample_forest(rng):
    return {"density": pick(rng, ("dense", "sparse")), "tree_colour": pick(rng, CANOPY_COLOURS, (3, 1, 1)),
            "clearing_position": pick(rng, (None,) + POSITIONS, [3] + [1] * len(POSITIONS)),
            "road_orientation": pick(rng, (None,) + ORIENTATIONS, (3, 1, 1, 1))}


def draw_forest(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground((70, 62, 42))
    cv.draw_extras()
    clearing = None
    if a["clearing_position"]:
        fx, fy = POSITION_XY[a["clearing_position"]]
        clearing = (cv.px(fx), cv.px(fy), cv.px(0.17))
        x, y, r = clearing
        cv.draw.ellipse([x - r, y - r, x + r, y + r], fill=cv.tone(MEADOW, 10))
    base = PALETTE[a["tree_colour"]]
    n_trees = int((260 if a["density"] == "dense" else 70) * (s / 96) ** 2)
    for _ in range(n_trees):
        x, y = cv.rng.uniform(0, s), cv.rng.uniform(0, s)
        if clearing and math.dist((x, y), clearing[:2]) < clearing[2] + 2:
            continue
        rgb = shade(cv.named(a["tree_colour"]) if cv.rng.random() < 0.5 else base, cv.rng.uniform(0.6, 1.0))
        cv.tree((x, y), cv.px(cv.rng.uniform(0.035, 0.06)), rgb)
    if a["road_orientation"]:
        road = cv.band(a["road_orientation"], cv.px(0.03), cv.px(cv.rng.uniform(-0.3, 0.3)), cv.px(0.03))
        cv.draw.polygon(road.polygon(s), fill=cv.tone((150, 122, 84), 8))


def describe_forest(a: dict, ph: Phrasing) -> List[str]:
    density, colour, road = a["density"], a["tree_colour"], a["road_orientation"]
    dense = ph.pick("dense", "thick") if density == "dense" else "sparse"
    woods = ph.pick("forest", "woodland")
    clearing = f"a clearing {ph.position(a['clearing_position'])}" if a["clearing_position"] else "no clearing"
    road_part = f"a {road} road crosses" if road else "no road crosses"
    return [
        f"A {dense} {woods} of {colour} trees.",
        f"{dense} {colour} trees cover the area around {clearing}." if a["clearing_position"]
        else f"{dense} {colour} trees cover the whole area.",
        f"A {dense} {colour} {woods} with {clearing}.",
        f"{road_part} a {dense} {woods}.",
        f"Aerial view of a {dense} {colour} {woods}" + (f" crossed by a {road} road." if road else " without roads."),
        f"Many {colour} trees grow {'densely' if density == 'dense' else 'sparsely'} here.",
    ]


def sample_river(rng):
    return {"river_orientation": pick(rng, ORIENTATIONS), "river_width": pick(rng, ("narrow", "wide")),
            "water_colour": pick(rng, WATER_COLOURS, (3, 1)), "n_boats": randint(rng, 0, 3)}


def draw_water_band(cv: Canvas, orientation: str, half_width: float, water: RGB, wiggle: float) -> Band:
    s = cv.size
    river = cv.band(orientation, half_width, cv.px(cv.rng.uniform(-0.12, 0.12)), wiggle)
    cv.draw.polygon(river.polygon(s, extra_width=cv.px(0.03)), fill=cv.tone(SAND, 10))
    cv.draw.polygon(river.polygon(s), fill=water)
    return river


def draw_river(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground(GRASS)
    for _ in range(randint(cv.rng, 0, 3)):
        x, y = cv.rng.uniform(0, s), cv.rng.uniform(0, s)
        w, h = cv.px(cv.rng.uniform(0.15, 0.35)), cv.px(cv.rng.uniform(0.15, 0.35))
        cv.draw.rectangle([x, y, x + w, y + h], fill=cv.tone((120, 140, 70), 15))
    half = cv.px(0.06 if a["river_width"] == "narrow" else 0.12)
    river = draw_water_band(cv, a["river_orientation"], half, cv.named(a["water_colour"]), cv.px(0.05))
    cv.draw_extras()
    for t in cv.rng.uniform(-0.4, 0.4, size=a["n_boats"]) * s:
        x, y = river.point(float(t), cv.rng.uniform(-0.4, 0.4) * half)
        dx, dy = river.direction
        cv.car((x, y), math.atan2(dy, dx), (232, 232, 226), cv.px(0.08))


def describe_river(a: dict, ph: Phrasing) -> List[str]:
    o, colour, n = a["river_orientation"], a["water_colour"], a["n_boats"]
    width = a["river_width"] if a["river_width"] == "narrow" else ph.pick("wide", "broad")
    boats = ph.counted(n, BOAT_NOUNS) if n else ""
    return [
        f"A {width} {colour} river flows {o}ly through the land.",
        f"A {width} river runs {o}ly" + (f" with {boats} on it." if n else "."),
        f"There {ph.be(n)} {boats} on a {colour} river." if n else f"No boats are on the {width} {colour} river.",
        f"The {colour} river crosses the image {o}ly.",
        f"A {width} river with {colour} water and sandy banks.",
        f"Aerial view of a {o} river" + (f" with {boats}." if n else " without boats."),
    ]


def sample_beach(rng):
    return {"sea_position": pick(rng, SIDES), "n_umbrellas": randint(rng, 1, 6),
            "umbrella_colour": pick(rng, UMBRELLA_COLOURS), "n_boats": randint(rng, 0, 3)}


def draw_beach(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground((80, 120, 62))
    # Work in a frame where the sea is on the left, then map points to the sea's side.
    side = a["sea_position"]

    def to_image(u, v):
        return {"left": (u, v), "right": (s - u, v), "top": (v, u), "bottom": (v, s - u)}[side]

    phase, amp = cv.rng.uniform(0, 2 * math.pi), cv.px(0.03)
    shore = [cv.px(0.38) + amp * math.sin(2 * math.pi * v / s * 1.5 + phase) for v in np.linspace(0, s, 24)]
    vs = np.linspace(0, s, 24)

    def strip(u_from, u_to):
        return [to_image(u_from(i), v) for i, v in enumerate(vs)] + \
               [to_image(u_to(i), v) for i, v in reversed(list(enumerate(vs)))]

    sand_end = cv.px(cv.rng.uniform(0.7, 0.8))
    cv.draw.polygon(strip(lambda i: shore[i], lambda i: sand_end), fill=cv.tone(SAND, 8))
    cv.draw.polygon(strip(lambda i: -1, lambda i: shore[i]), fill=cv.tone((30, 100, 150), 10))
    cv.draw.polygon(strip(lambda i: shore[i] - cv.px(0.02), lambda i: shore[i]), fill=(200, 215, 220))
    cv.draw_extras()
    on_sand = (cv.px(0.46), cv.px(0.06), sand_end - cv.px(0.05), cv.px(0.94))
    for u, v in cv.scatter(a["n_umbrellas"], on_sand, cv.px(0.1)):
        x, y = to_image(u, v)
        r = cv.px(0.035)
        cv.draw.ellipse([x - r + 1, y - r + 1, x + r + 1, y + r + 1], fill=(120, 105, 80))
        cv.draw.ellipse([x - r, y - r, x + r, y + r], fill=cv.named(a["umbrella_colour"]))
    for u, v in cv.scatter(a["n_boats"], (cv.px(0.05), cv.px(0.08), cv.px(0.28), cv.px(0.92)), cv.px(0.15)):
        cv.car(to_image(u, v), cv.rng.uniform(0, math.pi), (232, 232, 226), cv.px(0.1))


def describe_beach(a: dict, ph: Phrasing) -> List[str]:
    pos, n, colour, boats_n = a["sea_position"], a["n_umbrellas"], a["umbrella_colour"], a["n_boats"]

    def umbrellas():
        return ph.counted(n, UMBRELLA_NOUNS, colour)

    boats = ph.counted(boats_n, BOAT_NOUNS) if boats_n else ""
    return [
        f"A beach with the sea {ph.position(pos)} and {umbrellas()} on the sand.",
        f"There {ph.be(n)} {umbrellas()} on the beach.",
        f"The sea is {ph.position(pos)}, next to a sandy beach" + (f" with {boats} offshore." if boats_n else "."),
        f"{umbrellas()} {ph.be(n)} standing on a beach beside the sea.",
        f"Aerial view of a coast where the sea lies {ph.position(pos)}.",
        f"{boats} {'floats' if boats_n == 1 else 'float'} on the sea near a beach." if boats_n
        else f"A quiet beach with {umbrellas()} and no boats.",
    ]


def sample_baseballfield(rng):
    n = randint(rng, 1, 3)
    n_cars = randint(rng, 0, 6)
    return {"n_diamonds": n, "diamond_size": pick(rng, ("small", "large")) if n == 1 else "small",
            "n_cars": n_cars, "car_colour": pick(rng, CAR_COLOURS) if n_cars else None,
            "parking_position": pick(rng, ("top", "bottom")) if n_cars else None}


def draw_diamond(cv: Canvas, home: Tuple[float, float], radius: float, turn: float) -> None:
    hx, hy = home
    up = -math.pi / 2 + turn
    start, end = math.degrees(up - math.pi / 4), math.degrees(up + math.pi / 4)
    cv.draw.pieslice([hx - radius, hy - radius, hx + radius, hy + radius], start, end, fill=cv.tone((135, 180, 95), 8))
    side = 0.55 * radius

    def base(angle, dist):
        return (hx + dist * math.cos(angle), hy + dist * math.sin(angle))

    infield = [home, base(up + math.pi / 4, side), base(up, side * math.sqrt(2)), base(up - math.pi / 4, side)]
    cv.draw.polygon(infield, fill=cv.tone((176, 120, 80), 8))
    inner = [base(up, 0.3 * side), base(up + math.pi / 4, 0.75 * side), base(up, 1.1 * side),
             base(up - math.pi / 4, 0.75 * side)]
    cv.draw.polygon(inner, fill=cv.tone((95, 145, 70), 6))
    for angle in (up - math.pi / 4, up + math.pi / 4):
        cv.draw.line([home, base(angle, radius)], fill=(225, 225, 215), width=1)


def draw_baseballfield(cv: Canvas, a: dict) -> None:
    cv.fill_ground(GRASS)
    top, bottom = 0.0, 1.0
    if a["n_cars"]:
        y0 = 0.02 if a["parking_position"] == "top" else 0.84
        cv.draw.rectangle([cv.px(0.02), cv.px(y0), cv.px(0.98), cv.px(y0 + 0.14)], fill=cv.tone(ASPHALT, 8))
        top, bottom = (0.18, 1.0) if a["parking_position"] == "top" else (0.0, 0.82)
    cv.draw_extras()
    n = a["n_diamonds"]
    radius = cv.px({"small": 0.2, "large": 0.3}[a["diamond_size"]] * (bottom - top) / 0.82 if n == 1 else 0.18)
    for k in range(n):
        cx = (k + 0.5) / n
        home = (cv.px(cx + cv.rng.uniform(-0.03, 0.03)), cv.px(top + 0.5 * (bottom - top)) + 0.45 * radius)
        draw_diamond(cv, home, radius, cv.rng.uniform(-0.3, 0.3))
    if a["n_cars"]:
        slots = np.linspace(0.08, 0.92, 10)
        y = cv.px((0.02 if a["parking_position"] == "top" else 0.84) + 0.07)
        for k in sorted(int(i) for i in cv.rng.choice(len(slots), size=a["n_cars"], replace=False)):
            cv.car((cv.px(slots[k]), y), math.pi / 2, cv.named(a["car_colour"]), cv.px(0.1))


def describe_baseballfield(a: dict, ph: Phrasing) -> List[str]:
    n, n_cars = a["n_diamonds"], a["n_cars"]

    def diamonds(adjectives=""):
        return ph.counted(n, DIAMOND_NOUNS, adjectives)

    if n_cars:
        cars = ph.counted(n_cars, CAR_NOUNS, a["car_colour"])
        lot = f"a parking lot {ph.position(a['parking_position'])}"
        parking = [f"{diamonds()} next to {lot} with {cars}.", f"{cars} {ph.be(n_cars)} parked near {diamonds()}."]
    else:
        parking = [f"{diamonds()} with no parking lot nearby.", f"Aerial view of {diamonds()} without cars."]
    return [
        f"There {ph.be(n)} {diamonds()} in the park.",
        f"{diamonds()} surrounded by grass.",
        f"A sports area with {diamonds(ph.size(a['diamond_size']))}.",
        *parking,
        f"Aerial view of {diamonds(ph.size(a['diamond_size']))}.",
    ]


def sample_pond(rng):
    return {"pond_position": pick(rng, POSITIONS), "pond_size": pick(rng, ("small", "large")),
            "water_colour": pick(rng, POND_COLOURS, (3, 1, 1)), "n_trees": randint(rng, 0, 6)}


def draw_pond(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground(MEADOW)
    cv.draw_extras()
    fx, fy = POSITION_XY[a["pond_position"]]
    centre = (cv.px(fx + cv.rng.uniform(-0.03, 0.03)), cv.px(fy + cv.rng.uniform(-0.03, 0.03)))
    radius = cv.px(0.11 if a["pond_size"] == "small" else 0.19)
    cv.pond(centre, radius * 1.12, cv.tone((120, 130, 80), 6))
    cv.pond(centre, radius, cv.named(a["water_colour"]))
    ring = radius * 1.35
    for k in range(a["n_trees"]):
        angle = 2 * math.pi * (k + cv.rng.uniform(-0.3, 0.3)) / max(1, a["n_trees"])
        p = (centre[0] + ring * math.cos(angle), centre[1] + ring * math.sin(angle))
        cv.tree((min(max(p[0], 3), s - 3), min(max(p[1], 3), s - 3)), cv.px(0.04), cv.tone(DARK_TREE, 8))


def describe_pond(a: dict, ph: Phrasing) -> List[str]:
    pos, size, colour, n = a["pond_position"], ph.size(a["pond_size"]), a["water_colour"], a["n_trees"]
    trees = ph.count(n, "tree", "trees") if n else ""
    return [
        f"A {size} {colour} pond {ph.position(pos)}.",
        f"There is a {size} pond {ph.position(pos)}" + (f" with {trees} nearby." if n else "."),
        f"A {colour} pond lies {ph.position(pos)}, surrounded by meadow.",
        f"{trees} grow around a {size} pond." if n else f"A {size} pond without trees around it.",
        f"Aerial view of a pond with {colour} water {ph.position(pos)}.",
        f"A {ph.pick('pond', 'small lake' if a['pond_size'] == 'small' else 'large lake')} {ph.position(pos)}"
        + (f" and {trees}." if n else "."),
    ]


def sample_bridge(rng):
    n_bridges = randint(rng, 1, 2)
    return {"river_orientation": pick(rng, ("horizontal", "vertical")),
            "water_colour": pick(rng, WATER_COLOURS, (3, 1)),
            "n_bridges": n_bridges, "bridge_colour": pick(rng, BRIDGE_COLOURS), "n_cars": randint(rng, 0, 4)}


def draw_bridge(cv: Canvas, a: dict) -> None:
    s = cv.size
    cv.fill_ground(GRASS)
    river = draw_water_band(cv, a["river_orientation"], cv.px(0.13), cv.named(a["water_colour"]), cv.px(0.02))
    cv.draw_extras()
    across = "vertical" if a["river_orientation"] == "horizontal" else "horizontal"
    positions = [0.0] if a["n_bridges"] == 1 else [-0.22, 0.22]
    deck = cv.named(a["bridge_colour"])
    decks = []
    for offset in positions:
        road = cv.band(across, cv.px(0.045), cv.px(offset + cv.rng.uniform(-0.05, 0.05)))
        cv.draw.polygon(road.polygon(s), fill=cv.tone(ASPHALT, 6))
        # The deck spans the water plus its banks; it is what the bridge colour names.
        # Arc length along the road where it meets the (wiggling) water centre line.
        wx, wy = river.point(dot(sub(road.centre, river.centre), river.direction))
        t_river = dot(sub((wx, wy), road.centre), road.direction)
        half_span = river.half_width + cv.px(0.07)
        edge = road.half_width + 1
        deck_poly = [road.point(t_river - half_span, -edge), road.point(t_river + half_span, -edge),
                     road.point(t_river + half_span, edge), road.point(t_river - half_span, edge)]
        cv.draw.polygon(deck_poly, fill=deck, outline=shade(deck, 0.6))
        decks.append((road, t_river, half_span))
    for k in range(a["n_cars"]):
        road, t_river, half_span = decks[k % len(decks)]
        t = t_river + cv.rng.uniform(-0.8, 0.8) * half_span
        x, y = road.point(t, (-0.45 if k % 2 else 0.45) * road.half_width)
        cv.car((x, y), math.atan2(road.direction[1], road.direction[0]), (48, 48, 52), cv.px(0.07))


def describe_bridge(a: dict, ph: Phrasing) -> List[str]:
    o, water, n, colour, n_cars = (a["river_orientation"], a["water_colour"], a["n_bridges"], a["bridge_colour"],
                                   a["n_cars"])

    def bridges():
        return ph.count(n, f"{colour} bridge", f"{colour} bridges")

    on = "the bridge" if n == 1 else "the bridges"
    cars = (f"{ph.counted(n_cars, CAR_NOUNS)} {ph.be(n_cars)} driving on {on}."
            if n_cars else f"No cars are on {on}.")
    return [
        f"{bridges()} {'crosses' if n == 1 else 'cross'} a {o} river.",
        f"There {ph.be(n)} {bridges()} over the {water} river.",
        f"A {o} {water} river spanned by {bridges()}.",
        cars,
        f"Aerial view of {bridges()} over a river that flows {o}ly.",
        f"A river with {water} water and {bridges()}.",
    ]


def sample_desert(rng):
    return {"sand_colour": pick(rng, SAND_COLOURS), "dune_orientation": pick(rng, ORIENTATIONS),
            "dune_size": pick(rng, ("small", "large")),
            "road_orientation": pick(rng, (None, "horizontal", "vertical"), (2, 1, 1))}


def draw_desert(cv: Canvas, a: dict) -> None:
    s = cv.size
    base = np.asarray(cv.named(a["sand_colour"]), dtype=np.float32)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    if a["dune_orientation"] == "horizontal":
        along = y
    elif a["dune_orientation"] == "vertical":
        along = x
    else:
        along = (x + y if cv.rng.random() < 0.5 else x - y) / math.sqrt(2)
    wavelength = cv.px(0.14 if a["dune_size"] == "small" else 0.3)
    warp = 0.6 * smooth_noise(cv.rng, s, 4)
    ridges = np.sin(2 * np.pi * along / wavelength + warp + cv.rng.uniform(0, 2 * np.pi))
    # Sharpened sine: long lit slopes and thin shadowed crests, as dunes look from above.
    relief = 1.0 + 0.1 * ridges - 0.12 * np.clip(ridges, 0.6, 1.0)
    cv.set_array(base[None, None, :] * relief[..., None])
    cv.draw_extras()
    for _ in range(randint(cv.rng, 0, 6)):
        p = (cv.rng.uniform(0, s), cv.rng.uniform(0, s))
        cv.tree(p, cv.px(0.015), (92, 96, 58))
    if a["road_orientation"]:
        road = cv.band(a["road_orientation"], cv.px(0.025), cv.px(cv.rng.uniform(-0.3, 0.3)))
        cv.draw.polygon(road.polygon(s), fill=cv.tone(ASPHALT, 6))


def describe_desert(a: dict, ph: Phrasing) -> List[str]:
    colour, o, road = a["sand_colour"], a["dune_orientation"], a["road_orientation"]
    size = ph.size(a["dune_size"])
    return [
        f"{with_article(colour)} desert with {size} dunes.",
        f"{size} {o} dunes cover the {colour} sand.",
        f"Sand dunes run {o}ly across {with_article(colour)} desert.",
        f"A {road} road crosses the {colour} desert." if road else f"A {colour} desert with no roads.",
        f"Aerial view of {size} sand dunes in a desert" + (f" with a {road} road." if road else "."),
        f"{colour} sand with {o} dune ridges.",
    ]


@dataclass(frozen=True)
class SceneClass:
    """One scene class: attribute sampler, drawer, caption templates, and distractors it must not get."""
    name: str
    sample: Callable[[np.random.Generator], dict]
    draw: Callable[[Canvas, dict], None]
    describe: Callable[[dict, Phrasing], List[str]]
    excluded_extras: Tuple[str, ...] = ()

    def __post_init__(self):
        if "_" in self.name or not self.name:  # an image's class id is its file name up to the first "_"
            raise ValueError(f"scene class name {self.name!r} must be non-empty and contain no '_'")


SCENES: Dict[str, SceneClass] = {scene.name: scene for scene in (
    SceneClass("airport", sample_airport, draw_airport, describe_airport),
    SceneClass("parkinglot", sample_parkinglot, draw_parkinglot, describe_parkinglot, ("cars",)),
    SceneClass("storagetanks", sample_storagetanks, draw_storagetanks, describe_storagetanks),
    SceneClass("residential", sample_residential, draw_residential, describe_residential, ("houses",)),
    SceneClass("farmland", sample_farmland, draw_farmland, describe_farmland),
    SceneClass("forest", sample_forest, draw_forest, describe_forest),
    SceneClass("river", sample_river, draw_river, describe_river, ("pond",)),
    SceneClass("beach", sample_beach, draw_beach, describe_beach, ("pond",)),
    SceneClass("baseballfield", sample_baseballfield, draw_baseballfield, describe_baseballfield, ("cars",)),
    SceneClass("pond", sample_pond, draw_pond, describe_pond, ("pond",)),
    SceneClass("bridge", sample_bridge, draw_bridge, describe_bridge, ("cars", "pond")),
    SceneClass("desert", sample_desert, draw_desert, describe_desert),
)}


def get_scene(name: str) -> SceneClass:
    if name not in SCENES:
        raise KeyError(f"unknown scene class {name!r}; available: {', '.join(SCENES)}")
    return SCENES[name]
