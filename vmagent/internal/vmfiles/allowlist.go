// Package vmfiles delivers the Istio VM files: only paths on a fixed
// allowlist, each with the owner and mode policy it needs, written atomically
// and verified against the declared size and SHA-256.
package vmfiles

import (
	"os"
	"sort"
)

// Spec is the policy for one allowlisted path.
type Spec struct {
	// Path is what callers name: the path Istio documents.
	Path string
	// Mode is used when the caller sends none; MaxMode bounds what it may send.
	Mode, MaxMode os.FileMode
	// Owners and Groups allowed; the first of each is the default.
	Owners, Groups []string
	// MaxSize bounds the declared size.
	MaxSize int64
	// ParentDir, when set, is created if missing (for paths on tmpfs);
	// otherwise the parent must exist (Install creates it).
	ParentDir *Dir
	// PersistAt keeps a root-only copy: one that survives a reboot, for
	// files under /run (tmpfs), which the sidecar unit restores before start;
	// and the one root-side steps read, for files in a directory istio-proxy
	// can write (it could swap the file it was given).
	PersistAt string
}

// Dir is how a missing parent directory is created.
type Dir struct {
	Mode         os.FileMode
	Owner, Group string
}

const (
	mib = 1 << 20
	// The proxy user the sidecar runs as.
	proxyUser = "istio-proxy"
)

// The paths and modes come from the istio-sidecar package and
// `istioctl x workload entry configure` (shared/istio-vm-contract.md §2),
// tightened: secrets are never group- or world-readable.
var allowlist = []Spec{
	{Path: "/usr/local/bin/pilot-agent", Mode: 0o755 | os.ModeSetgid, MaxMode: 0o755 | os.ModeSetgid,
		Owners: []string{"root"}, Groups: []string{proxyUser, "root"}, MaxSize: 512 * mib},
	{Path: "/usr/local/bin/envoy", Mode: 0o755 | os.ModeSetgid, MaxMode: 0o755 | os.ModeSetgid,
		Owners: []string{"root"}, Groups: []string{proxyUser, "root"}, MaxSize: 512 * mib},
	{Path: "/usr/local/bin/istio-start.sh", Mode: 0o755, MaxMode: 0o755,
		Owners: []string{"root"}, Groups: []string{"root"}, MaxSize: mib},
	{Path: "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json", Mode: 0o644, MaxMode: 0o644,
		Owners: []string{"root"}, Groups: []string{"root"}, MaxSize: 4 * mib},
	{Path: "/var/lib/istio/envoy/sidecar.env", Mode: 0o644, MaxMode: 0o644,
		Owners: []string{"root"}, Groups: []string{"root"}, MaxSize: mib,
		PersistAt: PersistDir + "/sidecar.env"},
	{Path: "/var/lib/istio/envoy/cluster.env", Mode: 0o644, MaxMode: 0o644,
		Owners: []string{"root"}, Groups: []string{"root"}, MaxSize: mib,
		PersistAt: PersistDir + "/cluster.env"},
	{Path: "/etc/istio/config/mesh", Mode: 0o640, MaxMode: 0o644,
		Owners: []string{"root", proxyUser}, Groups: []string{proxyUser}, MaxSize: 4 * mib},
	// pilot-agent rewrites root-cert.pem in its output directory, so it owns it.
	{Path: "/etc/certs/root-cert.pem", Mode: 0o644, MaxMode: 0o644,
		Owners: []string{proxyUser}, Groups: []string{proxyUser}, MaxSize: mib},
	{Path: "/var/run/secrets/tokens/istio-token", Mode: 0o600, MaxMode: 0o600,
		Owners: []string{proxyUser}, Groups: []string{proxyUser}, MaxSize: 64 << 10,
		ParentDir: &Dir{Mode: 0o755, Owner: proxyUser, Group: proxyUser},
		PersistAt: "/var/lib/meshvm/secrets/istio-token"},
}

// Lookup returns the policy for path; ok is false when path is not allowlisted.
func Lookup(path string) (Spec, bool) {
	for _, s := range allowlist {
		if s.Path == path {
			return s, true
		}
	}
	return Spec{}, false
}

// Paths lists every allowlisted path, sorted.
func Paths() []string {
	out := make([]string, 0, len(allowlist))
	for _, s := range allowlist {
		out = append(out, s.Path)
	}
	sort.Strings(out)
	return out
}

// PersistDir holds the reboot-proof copies of files kept under /run.
const PersistDir = "/var/lib/meshvm/secrets"
