"""The predictor's serving core: the feature vector, reading logprobs from a response, the ONNX runtime, the baseline.

The router imports this and only this of the predictor; it imports only ``common`` below it.
"""
