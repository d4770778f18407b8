package vmfiles

import (
	"cmp"
	"errors"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/fsroot"
)

// FuzzPolicy checks the delivery policy against any path, mode, owner and
// group: what it accepts is exactly an allowlisted path, with a mode inside
// that path's MaxMode and an owner and group it lists; everything else is a
// classed error naming the problem.
func FuzzPolicy(f *testing.F) {
	for _, p := range Paths() {
		f.Add(p, uint32(0), "", "")
	}
	seeds := []struct {
		path         string
		mode         uint32
		owner, group string
	}{
		{"/usr/local/bin/envoy", 0o2755, "root", "istio-proxy"},
		{"/usr/local/bin/envoy", 0o4755, "root", "root"},
		{"/var/run/secrets/tokens/istio-token", 0o644, "istio-proxy", "istio-proxy"},
		{"/var/run/secrets/tokens/istio-token", 0o600, "root", ""},
		{"/etc/certs/root-cert.pem", 0o100644, "", ""},
		{"/usr/local/bin/../bin/envoy", 0, "", ""},
		{"/usr/local/bin//envoy", 0, "", ""},
		{"/usr/local/bin/envoy/", 0, "", ""},
		{"usr/local/bin/envoy", 0, "", ""},
		{"/etc/passwd", 0, "", ""},
		{"/etc/istio/config/mesh\x00", 0, "", ""},
		{"/ETC/certs/root-cert.pem", 0, "", ""},
		{"/etc/istio/config/mesh", 0o644, "istio-proxy", "istio-proxy"},
		{"/etc/istio/config/mesh", 0o646, "nobody", "istio-proxy"},
	}
	for _, s := range seeds {
		f.Add(s.path, s.mode, s.owner, s.group)
	}
	s, _ := sandbox(f)
	f.Fuzz(func(t *testing.T, p string, mode uint32, owner, group string) {
		data := "x"
		r, err := s.validate(Header{Path: p, Size: 1, SHA256: digestOf([]byte(data)), Mode: mode, Owner: owner, Group: group})
		if err != nil {
			if !errors.Is(err, agenterr.InvalidArgument) && !errors.Is(err, agenterr.PermissionDenied) && !errors.Is(err, agenterr.FailedPrecondition) {
				t.Fatalf("%q %#o %q:%q: unclassed error %v", p, mode, owner, group, err)
			}
			if p != "" && !strings.Contains(err.Error(), p) && !strings.Contains(err.Error(), strconv.Quote(p)) {
				t.Fatalf("%q: error %q does not name the path", p, err)
			}
			return
		}
		spec, ok := Lookup(p)
		if !ok || spec.Path != p || path.Clean(p) != p || !path.IsAbs(p) {
			t.Fatalf("accepted %q, which is not an allowlisted path", p)
		}
		got := fsroot.UnixMode(r.mode)
		if got&^fsroot.UnixMode(spec.MaxMode) != 0 || (mode != 0 && got != mode) {
			t.Fatalf("%q: accepted mode %#o (asked %#o), allowed at most %#o", p, got, mode, fsroot.UnixMode(spec.MaxMode))
		}
		wantOwner, wantGroup := cmp.Or(owner, spec.Owners[0]), cmp.Or(group, spec.Groups[0])
		if !slices.Contains(spec.Owners, wantOwner) || !slices.Contains(spec.Groups, wantGroup) {
			t.Fatalf("%q: accepted %s:%s, allowed %v:%v", p, wantOwner, wantGroup, spec.Owners, spec.Groups)
		}
		if uid, _ := s.users.UserID(wantOwner); uid != r.uid {
			t.Fatalf("%q: uid %d, want %s's %d", p, r.uid, wantOwner, uid)
		}
		if gid, _ := s.users.GroupID(wantGroup); gid != r.gid {
			t.Fatalf("%q: gid %d, want %s's %d", p, r.gid, wantGroup, gid)
		}
	})
}
