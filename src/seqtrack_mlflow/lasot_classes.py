"""The LaSOT class names: the dataset's 70 categories and the two the bundled sample draws."""

# The 70 LaSOT categories (Fan et al., CVPR 2019), spelled as the dataset's folders are.
LASOT_CLASSES = (
    "airplane", "basketball", "bear", "bicycle", "bird", "boat", "book", "bottle", "bus", "car",
    "cat", "cattle", "chameleon", "coin", "crab", "crocodile", "cup", "deer", "dog", "drone",
    "electricfan", "elephant", "flag", "fox", "frog", "gametarget", "gecko", "giraffe",
    "goldfish", "gorilla", "guitar", "hand", "hat", "helmet", "hippo", "horse", "kangaroo",
    "kite", "leopard", "licenseplate", "lion", "lizard", "microphone", "monkey", "motorcycle",
    "mouse", "person", "pig", "pool", "rabbit", "racing", "robot", "rubicCube", "sepia", "shark",
    "sheep", "skateboard", "spider", "squirrel", "surfboard", "swing", "tank", "tiger", "train",
    "truck", "turtle", "umbrella", "volleyball", "yoyo", "zebra",
)
# The bundled procedural data only draws these two classes.
SAMPLE_CLASSES = ("airplane", "bicycle")
