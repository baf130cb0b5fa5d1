"""Raw photos to region features, the bottom-up way: a detector proposes boxes, a CNN backbone gives a feature map, RoIAlign pools each box."""
