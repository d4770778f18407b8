//go:build linux

package vm

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// A VM's root is an overlay: its writes land in its own layer, survive a
// remount (a host reboot), and never reach the cached tree; a VM copied by
// an earlier meshvm is used as it is.
func TestRootOverlay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tmp := t.TempDir()
	lower := filepath.Join(tmp, "rootfs")
	os.MkdirAll(filepath.Join(lower, "etc"), 0o755)
	os.WriteFile(filepath.Join(lower, "etc/os-release"), []byte("debian\n"), 0o644)
	s := Spec{Name: "t1", Rootfs: lower, Dir: filepath.Join(tmp, "vms", "t1")}
	os.MkdirAll(filepath.Dir(s.Dir), 0o755)
	if err := mountRoot(context.Background(), log, s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountRoot(s.Dir) })
	if !mounted(s.Dir) {
		t.Skip("overlayfs does not mount here: the copy fallback ran")
	}
	if b, err := os.ReadFile(filepath.Join(s.Dir, "etc/os-release")); err != nil || string(b) != "debian\n" {
		t.Fatalf("lower layer not visible: %q, %v", b, err)
	}
	os.WriteFile(filepath.Join(s.Dir, "etc/hostname"), []byte("t1\n"), 0o644)
	if _, err := os.Stat(filepath.Join(lower, "etc/hostname")); err == nil {
		t.Error("a VM's write reached the cached tree")
	}
	if err := unmountRoot(s.Dir); err != nil || mounted(s.Dir) {
		t.Fatalf("unmount: %v", err)
	}
	if err := mountRoot(context.Background(), log, s); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(s.Dir, "etc/hostname")); err != nil || string(b) != "t1\n" {
		t.Errorf("after remount: %q, %v, want the VM's change kept", b, err)
	}
	if err := mountRoot(context.Background(), log, s); err != nil || !mounted(s.Dir) {
		t.Errorf("mounting a mounted root again: %v", err)
	}

	old := Spec{Name: "t2", Rootfs: lower, Dir: filepath.Join(tmp, "vms", "t2")}
	os.MkdirAll(filepath.Join(old.Dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(old.Dir, "etc/hostname"), []byte("t2\n"), 0o644)
	if err := mountRoot(context.Background(), log, old); err != nil || mounted(old.Dir) {
		t.Errorf("a copied root: %v, mounted %v; want it used as it is", err, mounted(old.Dir))
	}
}
