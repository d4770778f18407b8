package vmcore

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

func openStore(t *testing.T, vms ...string) (DirStore, string) {
	t.Helper()
	dir := t.TempDir()
	d, err := statedir.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return DirStore{Dir: d, VMs: vms}, dir
}

// The state directory keeps the files meshvm has always written there: a
// store must read what an older hostctl wrote, and it what the store writes.
func TestDirStoreKeepsTheStateDirectoryLayout(t *testing.T) {
	s, dir := openStore(t, "vm1", "vm2")
	if err := s.SetAddress("vm1", "10.0.0.7"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetJoined("vm1", Joined{Revision: "canary", Istio: "1.31.0"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFiles("vm1", workloadfiles.Files{Token: []byte("tok"), ClusterEnv: []byte("A=1")}); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]string{
		"vms/vm1/address":           "10.0.0.7",
		"vms/vm1/istio.json":        `{"revision":"canary","istio":"1.31.0"}`,
		"vms/vm1/files/istio-token": "tok",
		"vms/vm1/files/cluster.env": "A=1",
	} {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil || string(b) != want {
			t.Errorf("%s: got %q (%v), want %q", rel, b, err, want)
		}
		if fi, err := os.Stat(filepath.Join(dir, rel)); err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", rel, fi.Mode().Perm())
		}
	}
	if j, ok, err := s.Joined("vm1"); err != nil || !ok || j != (Joined{Revision: "canary", Istio: "1.31.0"}) {
		t.Errorf("Joined: got %+v %v %v", j, ok, err)
	}
	if tok, err := s.Token("vm1"); err != nil || string(tok) != "tok" {
		t.Errorf("Token: got %q %v", tok, err)
	}
}
