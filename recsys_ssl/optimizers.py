"""Optimizers of the two-tower model (``train.optimizer``), including a lazy Adam for large id tables.

tf.keras' Adam applies a sparse (``tf.IndexedSlices``) gradient densely: it decays both moment
slots of *every* row and moves every row of the table each step (its docstring says so). With a
10M-item embedding table that is a pass over 3 x 10M x d floats per table per step, whatever the
batch: the step cost grows with the catalogue. :class:`LazyAdam` updates only the rows a batch
touched (the moments of other rows wait until their row is next seen, as in TF-Addons'
``LazyAdam``), so a step costs O(batch) on the tables; dense variables (MLPs) get Adam unchanged.
"""

from __future__ import annotations

import tensorflow as tf

from recsys_ssl.config import TrainConfig

class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose sparse updates touch only the gradient's rows.

    For a gradient ``g`` on rows ``I`` (unique: the base class sums duplicate indices first) at
    step ``t``, with ``alpha_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``::

        m[I] = beta_1 * m[I] + (1 - beta_1) * g
        v[I] = beta_2 * v[I] + (1 - beta_2) * g^2
        w[I] -= alpha_t * m[I] / (sqrt(v[I]) + epsilon)

    and rows outside ``I`` (weights and both moments) are left as they are. Dense gradients take
    Adam's update. On a variable's first step the touched rows move exactly as Adam moves them.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step))
                 / (1 - tf.pow(beta_1, step)))
        epsilon = self.epsilon * tf.sqrt(1 - tf.pow(beta_2, step)) if self.adaptive_epsilon else self.epsilon
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        rows, values = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))


def make_optimizer(config: TrainConfig) -> tf.keras.optimizers.Optimizer:
    """The optimizer ``config.optimizer`` at ``config.learning_rate``.

    Raises:
      ValueError: an unknown name (the message lists the valid ones).
    """
    classes = {"adam": tf.keras.optimizers.Adam, "lazy_adam": LazyAdam, "adagrad": tf.keras.optimizers.Adagrad}
    if config.optimizer not in classes:
        raise ValueError(f"train.optimizer must be one of {sorted(classes)}, received {config.optimizer!r}")
    return classes[config.optimizer](learning_rate=config.learning_rate)
