import pytest

from mmrope.data.shapes import sample_scene
from mmrope.eval.shapes_scoring import aggregate, parse_caption, score_caption, score_captions


def level2_scene(relation="left of"):
    """A fixed level-2 scene: red circle at left, blue square at right (or as ``relation`` says)."""
    a = {"colour": "red", "shape": "circle", "r": 0.1, "x": 0.2, "y": 0.5}
    b = {"colour": "blue", "shape": "square", "r": 0.1, "x": 0.8, "y": 0.55}
    if relation == "above":
        a, b = {**a, "x": 0.5, "y": 0.2}, {**b, "x": 0.55, "y": 0.8}
    return {"level": 2, "objects": [a, b], "relations": [{"subject": 0, "relation": relation, "object": 1}]}


@pytest.mark.parametrize("split", ["train", "compositional"])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_ground_truth_scores_one(level, split):
    scenes = [sample_scene(0, i, split, level, max_objects=5) for i in range(200)]
    for scene in scenes:
        for caption in scene["captions"]:
            s = score_caption(caption, scene)
            assert all(v == 1.0 for v in s.values()), (caption, s)
    agg = score_captions([s["captions"][0] for s in scenes], scenes)
    assert agg["exact"] == 1.0 and agg["place" if level == 1 else "relation"] == 1.0 and agg["n"] == 200


@pytest.mark.parametrize("caption,expected", [
    ("red circle left of blue square", {"attribute": 1, "relation": 1, "axis": 1, "exact": 1}),
    ("blue square right of red circle", {"attribute": 1, "relation": 1, "axis": 1, "exact": 1}),
    ("The red circle is to the left of the blue square.", {"attribute": 1, "relation": 1, "axis": 1, "exact": 1}),
    ("blue circle left of red square", {"attribute": 0, "relation": 0, "axis": 0, "exact": 0}),  # colours swapped
    ("red square left of blue circle", {"attribute": 0, "relation": 0, "axis": 0, "exact": 0}),  # shapes swapped
    ("blue square left of red circle", {"attribute": 1, "relation": 0, "axis": 1, "exact": 0}),  # objects swapped
    ("red circle right of blue square", {"attribute": 1, "relation": 0, "axis": 1, "exact": 0}),  # direction wrong
    ("red circle above blue square", {"attribute": 1, "relation": 0, "axis": 0, "exact": 0}),  # axis wrong
    ("red circle left of green square", {"attribute": 0.5, "relation": 0, "axis": 0, "exact": 0}),  # one colour wrong
    ("red circle", {"attribute": 0.5, "relation": 0, "axis": 0, "exact": 0}),  # object and relation missing
    ("red circle left of blue square, red circle right of blue square", {"attribute": 1, "relation": 0, "exact": 0}),
    ("red circle left of blue square, green triangle", {"attribute": 2 / 3, "relation": 1, "exact": 0}),  # extra object
    ("", {"attribute": 0, "relation": 0, "axis": 0, "exact": 0}),
    ("zebra zebra zebra", {"attribute": 0, "relation": 0, "axis": 0, "exact": 0}),
])
def test_level2_catches_each_kind_of_error(caption, expected):
    s = score_caption(caption, level2_scene())
    for k, v in expected.items():
        assert s[k] == pytest.approx(v), (k, s)


def test_level2_vertical_relations():
    scene = level2_scene("above")
    assert score_caption("red circle above blue square", scene)["exact"] == 1
    assert score_caption("blue square below red circle", scene)["exact"] == 1
    assert score_caption("blue square under red circle", scene)["exact"] == 1
    assert score_caption("red circle below blue square", scene)["relation"] == 0
    assert score_caption("blue square above red circle", scene)["relation"] == 0


def test_level1_place():
    scene = sample_scene(0, 0, level=1)
    obj = scene["objects"][0]
    assert score_caption(f"{obj['colour']} {obj['shape']} in the {obj['place']}", scene)["exact"] == 1
    wrong = "bottom right" if obj["place"] != "bottom right" else "top left"
    s = score_caption(f"{obj['colour']} {obj['shape']} in the {wrong}", scene)
    assert s["attribute"] == 1 and s["place"] == 0 and s["exact"] == 0 and "relation" not in s
    other = "green" if obj["colour"] != "green" else "red"
    s = score_caption(f"{other} {obj['shape']} in the {obj['place']}", scene)
    assert s["attribute"] == 0 and s["place"] == 1 and s["exact"] == 0


def test_level3_count_size_and_any_true_relation():
    scene = {
        "level": 3,
        "objects": [
            {"colour": "red", "shape": "circle", "size": "small", "r": 0.08, "x": 0.2, "y": 0.2},
            {"colour": "blue", "shape": "square", "size": "large", "r": 0.12, "x": 0.8, "y": 0.25},
            {"colour": "green", "shape": "triangle", "size": "small", "r": 0.08, "x": 0.75, "y": 0.8},
        ],
        "relations": [{"subject": 0, "relation": "left of", "object": 1},
                      {"subject": 1, "relation": "above", "object": 2}],
    }
    truth = "three shapes: small red circle left of large blue square, large blue square above small green triangle"
    assert score_caption(truth, scene)["exact"] == 1
    # a different but true pair of relations is just as right (circle and triangle: diagonal, both hold)
    other = "three shapes: small green triangle below large blue square, small red circle above small green triangle"
    assert score_caption(other, scene)["relation"] == 1
    s = score_caption(truth.replace("three", "four"), scene)
    assert s["count"] == 0 and s["relation"] == 1 and s["exact"] == 0
    s = score_caption(truth.replace("small red", "large red"), scene)
    assert s["attribute"] == pytest.approx(2 / 3) and s["relation"] == 1
    s = score_caption(truth.replace("above", "below"), scene)
    assert s["relation"] == 0.5 and s["axis"] == 1
    s = score_caption("three shapes: small red circle left of large blue square", scene)
    assert s["relation"] == 0.5  # one of the two relations the reference states
    contradictory = "small red circle left of large blue square, large red circle above small green triangle"
    assert parse_caption(contradictory)["objects"][0]["size"] == "inconsistent"
    assert score_caption(contradictory, scene)["attribute"] == pytest.approx(2 / 3)


def test_parse_caption_structure():
    p = parse_caption("three shapes: small red circle left of large blue square, large blue square above a green "
                      "triangle")
    assert p["count"] == 3 and p["place"] is None
    assert p["objects"] == [{"colour": "red", "shape": "circle", "size": "small"},
                            {"colour": "blue", "shape": "square", "size": "large"},
                            {"colour": "green", "shape": "triangle", "size": None}]
    assert p["relations"] == [{"subject": 0, "relation": "left of", "object": 1},
                              {"subject": 1, "relation": "above", "object": 2}]
    assert parse_caption("yellow square at the top")["place"] == "top"
    assert parse_caption("yellow square in the centre")["place"] == "centre"
    assert parse_caption("two red circles")["objects"] == [{"colour": "red", "shape": "circle", "size": None}]


def test_aggregate_means_over_samples_that_have_the_key():
    agg = aggregate([{"relation": 1.0, "exact": 1.0}, {"relation": 0.0, "exact": 0.0, "count": 1.0}])
    assert agg == {"relation": 0.5, "exact": 0.5, "count": 1.0, "n": 2}
    with pytest.raises(ValueError, match="2 predictions for 1 scenes"):
        score_captions(["a", "b"], [level2_scene()])


def test_relation_given_both_objects_named_right():
    """A caption that names the wrong object is left out of relation_named instead of counted as a wrong relation."""
    scene = level2_scene()
    right = score_caption("red circle left of blue square", scene)
    assert right["named"] == 1 and right["relation_named"] == 1 and right["axis_named"] == 1
    wrong_side = score_caption("red circle right of blue square", scene)
    assert wrong_side["named"] == 1 and wrong_side["relation_named"] == 0 and wrong_side["axis_named"] == 1
    misnamed = score_caption("red circle left of green square", scene)
    assert misnamed["named"] == 0 and "relation_named" not in misnamed
    scores = aggregate([right, wrong_side, misnamed])
    assert scores["named"] == pytest.approx(2 / 3) and scores["relation_named"] == 0.5 and scores["relation"] == 1 / 3
