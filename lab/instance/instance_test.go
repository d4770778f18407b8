package instance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClaim(t *testing.T) {
	ClaimDir = t.TempDir()
	a, b := t.TempDir(), t.TempDir()
	ia, err := Claim(a)
	if err != nil || ia.N != 0 {
		t.Fatalf("first lab: got %v, %v, want instance 0", ia, err)
	}
	ib, err := Claim(b)
	if err != nil || ib.N != 1 {
		t.Fatalf("second lab: got %v, %v, want instance 1", ib, err)
	}
	if again, err := Claim(b); err != nil || again != ib || Of(b) != ib {
		t.Errorf("claim again: got %v, %v, want %v kept", again, err, ib)
	}
	if ia.Port(16443, APIPort) == ib.Port(16443, APIPort) || ia.IstiodIP().Equal(ib.IstiodIP()) || ia.Names() == ib.Names() {
		t.Errorf("instances 0 and 1 share a port, address or name")
	}
	if ia.Port(16443, APIPort) != 16443 || ia.IstiodIP().String() != "10.213.255.253" || ia.Names() != "" {
		t.Errorf("instance 0 moved from the lab's values: %d %s %q", ia.Port(16443, APIPort), ia.IstiodIP(), ia.Names())
	}

	// A lab reached through a symlink (a second engineer's state
	// directory) is the same lab: the same instance, its record kept.
	link := filepath.Join(t.TempDir(), "lab")
	if err := os.Symlink(b, link); err != nil {
		t.Fatal(err)
	}
	if got, err := Claim(link); err != nil || got != ib || Of(b) != ib {
		t.Errorf("claim through a symlink: got %v, %v (b records %v), want %v", got, err, Of(b), ib)
	}

	// Released at down: the next lab takes 0 again; b keeps 1.
	if err := Release(a); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(a)
	c := t.TempDir()
	if ic, err := Claim(c); err != nil || ic.N != 0 {
		t.Errorf("after release: got %v, %v, want 0", ic, err)
	}
	// A lab whose directory is gone frees its number without a down.
	os.RemoveAll(b)
	d := t.TempDir()
	if id, err := Claim(d); err != nil || id.N != 1 {
		t.Errorf("after b's directory went: got %v, %v, want 1", id, err)
	}

	// A lab made before instances (state, no record) must be 0: refused
	// while another lab holds 0, naming both.
	old := t.TempDir()
	os.MkdirAll(filepath.Join(old, "vms"), 0o700)
	os.WriteFile(filepath.Join(old, "vms", "vm1.json"), []byte(`{"slot":0}`), 0o600)
	if _, err := Claim(old); err == nil || !strings.Contains(err.Error(), "predates lab instances") || !strings.Contains(err.Error(), c) {
		t.Errorf("a pre-instance lab while 0 is held: got %v", err)
	}
	if _, ok := Lookup(filepath.Join(t.TempDir(), "gone")); ok {
		t.Error("Lookup found a lab in a directory that holds none")
	}
	if _, ok := Recorded(old); ok {
		t.Error("Recorded found a claim in a pre-instance lab")
	}
	if inst, ok := Lookup(old); !ok || inst.N != 0 {
		t.Errorf("Lookup of a pre-instance lab: got %v, %v, want 0, true", inst, ok)
	}
	Release(c)
	if io, err := Claim(old); err != nil || io.N != 0 {
		t.Errorf("a pre-instance lab with 0 free: got %v, %v, want 0", io, err)
	}
}
