"""The BatchNorm math in one place, in two halves.

* :mod:`bninspect.numerics.reference`: numpy only. The formulas (eval, train, folded, running
  update), the float64 reference, tolerances, folding into scale/shift, eps defaults and eps
  sensitivity, the drift statistics. Torch-free commands (show, check, explain, report) use it.
* :mod:`bninspect.numerics.kernels`: torch. The kernels on devices, device names, conv-BN fusion
  with torch's ``fuse_conv_bn_weights``, train vs eval, the streaming statistics of a data pass.

No other module writes a BN formula. This package imports neither half, so importing one never
loads the other; it holds the eps defaults, which need neither numpy nor torch (``bninspect
rules`` lists the rules without importing numpy).
"""

# PyTorch's default for nn.BatchNorm*d (torch/nn/modules/batchnorm.py: eps=1e-5) and Keras/
# TensorFlow's BatchNormalization (epsilon=1e-3, keras.io/api/layers/normalization_layers).
TORCH_EPS = 1e-5
KERAS_EPS = 1e-3
