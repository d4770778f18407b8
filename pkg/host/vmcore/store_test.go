package vmcore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

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

func TestDirStoreRecordsNeverWrittenAreZero(t *testing.T) {
	s, _ := openStore(t, "vm1")
	if a, err := s.Address("vm1"); a != "" || err != nil {
		t.Errorf("Address: got %q %v, want none", a, err)
	}
	if _, ok, err := s.Joined("vm1"); ok || err != nil {
		t.Errorf("Joined: got ok %v %v, want none", ok, err)
	}
	if tok, err := s.Token("vm1"); tok != nil || err != nil {
		t.Errorf("Token: got %q %v, want none", tok, err)
	}
	if _, ok, err := s.LastRestart("vm1"); ok || err != nil {
		t.Errorf("LastRestart: got ok %v %v, want none", ok, err)
	}
}

func TestDirStoreLastRestartRoundTrips(t *testing.T) {
	s, _ := openStore(t, "vm1")
	want := Restart{At: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), EntryConnectedAt: "2026-12-07T11:00:00Z",
		EntryProbedAt: time.Date(2026, 12, 7, 11, 59, 0, 0, time.UTC), EntryBeforeRestart: "external-app-10.0.0.7"}
	if err := s.SetLastRestart("vm1", want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.LastRestart("vm1")
	if err != nil || !ok || !got.At.Equal(want.At) || !got.EntryProbedAt.Equal(want.EntryProbedAt) || got.EntryConnectedAt != want.EntryConnectedAt || got.EntryBeforeRestart != want.EntryBeforeRestart {
		t.Errorf("got %+v %v %v, want %+v", got, ok, err, want)
	}
}

func TestDirStoreAddressHolderLooksAtOtherVMs(t *testing.T) {
	s, _ := openStore(t, "vm1", "vm2")
	if err := s.SetAddress("vm2", "10.0.0.9"); err != nil {
		t.Fatal(err)
	}
	if h, err := s.AddressHolder("10.0.0.9", "vm1"); h != "vm2" || err != nil {
		t.Errorf("got %q %v, want vm2", h, err)
	}
	if h, err := s.AddressHolder("10.0.0.9", "vm2"); h != "" || err != nil {
		t.Errorf("the VM itself: got %q %v, want none", h, err)
	}
}

// AgentTLS pins the agent CA the state directory creates and presents the
// client certificate it issues: the same CA on every call.
func TestDirStoreAgentTLSPinsOneCA(t *testing.T) {
	s, _ := openStore(t)
	a, err := s.AgentTLS("10.0.0.7")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.AgentTLS("10.0.0.8")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Certificates) != 1 || a.RootCAs == nil || !a.RootCAs.Equal(b.RootCAs) {
		t.Errorf("got %d client certificates, roots equal %v; want one certificate and one pinned CA", len(a.Certificates), a.RootCAs.Equal(b.RootCAs))
	}
}
