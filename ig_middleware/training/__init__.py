"""Training code for the default offline judges (cost model data, labelling and training).

Nothing here runs at inference time; the package ships only the trained head
(``ig_middleware/weights/cost_model.*``).
"""
