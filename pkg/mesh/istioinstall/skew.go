package istioinstall

import (
	"fmt"
	"strconv"
	"strings"
)

// minor parses "1.31.2" (or "1.31.0-beta.1") into major and minor.
func minor(v string) (int, int, bool) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	min, err2 := strconv.Atoi(strings.SplitN(parts[1], "-", 2)[0])
	return maj, min, err1 == nil && err2 == nil
}

// Skew judges a VM's proxy version against the istiod it connects to by
// Istio's policy (istio.io/latest/docs/releases/supported-releases): the
// control plane may be one minor version ahead of the data plane, the data
// plane never ahead of the control plane. Versions it cannot parse (a
// development build) are not judged: ok with a note.
func Skew(proxy, istiod string) (ok bool, detail string) {
	pm, pn, ok1 := minor(proxy)
	im, in, ok2 := minor(istiod)
	switch {
	case !ok1 || !ok2:
		return true, fmt.Sprintf("proxy %s, istiod %s: not release versions, skew not judged", orUnknown(proxy), orUnknown(istiod))
	case pm != im || pn > in:
		return false, fmt.Sprintf("proxy %s is newer than istiod %s: Istio never supports a data plane ahead of its control plane; "+
			"onboard the VM with istiod's version (or upgrade istiod first)", proxy, istiod)
	case in-pn > 1:
		return false, fmt.Sprintf("proxy %s is %d minor versions behind istiod %s: Istio supports one; "+
			"onboarding the VM delivers istiod's version", proxy, in-pn, istiod)
	}
	return true, fmt.Sprintf("proxy %s, istiod %s: supported", proxy, istiod)
}
