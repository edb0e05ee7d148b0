// How a pair of rows is scored: passed from the argument checks down to every kernel (host and device
// code; no torch headers), so no layer turns it into a bool that cannot say which way it points.
#pragma once

namespace sentfuse {

// Cosine: the dot product over both norms. Dot: the raw dot product of the stored rows.
enum class Metric : int { Cosine = 0, Dot };

}  // namespace sentfuse
