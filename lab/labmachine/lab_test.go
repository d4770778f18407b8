package labmachine

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/pkg/machine"
)

// TestLifecycle drives two real lab VMs through the machine contract.
func TestLifecycle(t *testing.T) {
	labtest.RequireVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir := t.TempDir()
	p := New(log, dir, labtest.Cache())
	t.Cleanup(func() {
		for _, n := range []string{"lm1", "lm2"} {
			if err := p.Delete(context.Background(), n); err != nil {
				t.Errorf("delete %s: %v", n, err)
			}
		}
	})

	m1, err := p.Launch(ctx, machine.Spec{Name: "lm1"})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := p.Launch(ctx, machine.Spec{Name: "lm2"})
	if err != nil {
		t.Fatal(err)
	}
	if m1.State != "Running" || m1.Addresses[0] == m2.Addresses[0] {
		t.Fatalf("got %+v and %+v, want two running VMs with their own addresses", m1, m2)
	}
	out, err := p.Exec(ctx, "lm1", nil, "hostname")
	if err != nil || strings.TrimSpace(string(out)) != "lm1" {
		t.Errorf("hostname: got %q, %v", out, err)
	}
	host, _ := p.HostAddress("lm1")
	out, err = p.Exec(ctx, "lm1", nil, "ip", "-4", "route", "show", "default")
	if err != nil || !strings.Contains(string(out), "via "+host) {
		t.Errorf("default route: got %q, %v, want via %s", out, err, host)
	}

	if err := p.Transfer(ctx, "lm1", "/etc/meshvm/agent/server.pem", strings.NewReader("cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = p.Exec(ctx, "lm1", nil, "stat", "-c", "%a %s", "/etc/meshvm/agent/server.pem")
	if err != nil || strings.TrimSpace(string(out)) != "600 4" {
		t.Errorf("transferred file: got %q, %v, want mode 600 and 4 bytes", out, err)
	}

	again, err := p.Launch(ctx, machine.Spec{Name: "lm1"})
	if err != nil || again.Addresses[0] != m1.Addresses[0] {
		t.Errorf("second launch: got %+v, %v, want the same VM", again, err)
	}

	// Stop keeps the disk; the next Launch boots the same machine.
	if err := p.Stop(ctx, "lm1"); err != nil {
		t.Fatal(err)
	}
	if m, _ := p.Info(ctx, "lm1"); m.State != "Stopped" {
		t.Errorf("after stop: got %+v", m)
	}
	if _, err := p.Exec(ctx, "lm1", nil, "true"); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("exec on a stopped VM: got %v", err)
	}
	if _, err := p.Launch(ctx, machine.Spec{Name: "lm1"}); err != nil {
		t.Fatal(err)
	}
	if out, err := p.Exec(ctx, "lm1", nil, "cat", "/etc/meshvm/agent/server.pem"); err != nil || string(out) != "cert" {
		t.Errorf("after restart: got %q, %v, want the file kept", out, err)
	}

	list, err := p.List(ctx)
	if err != nil || len(list) != 2 {
		t.Errorf("list: got %+v, %v", list, err)
	}
	if err := p.Delete(ctx, "lm2"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Info(ctx, "lm2"); !errors.Is(err, machine.ErrNotFound) {
		t.Errorf("info after delete: got %v, want not found", err)
	}
	if _, err := os.Stat("/run/netns/meshvm-lm2"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns of lm2 left behind: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "lm2*")); len(left) > 0 {
		t.Errorf("lm2's files left behind: %v", left)
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), filepath.Join(dir, "lm2")) {
		t.Error("lm2's root is still mounted")
	}
	// The VMs' changes stay in their own layer: the cached tree is untouched.
	rootfs, _ := filepath.Glob(filepath.Join(labtest.Cache(), "rootfs-*"))
	for _, r := range rootfs {
		if _, err := os.Stat(filepath.Join(r, "etc/meshvm")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a VM wrote into the cached root filesystem %s: %v", r, err)
		}
	}
	if _, err := p.Launch(ctx, machine.Spec{Name: "Bad_Name"}); err == nil {
		t.Error("an invalid VM name was accepted")
	}
}
