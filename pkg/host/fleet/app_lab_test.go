//go:build linux

package fleet

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/lab/labmachine"
	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/pkg/machine"
)

// TestAppOnLabVM converges the recipe's app on a real systemd VM: served
// unprivileged, unchanged the second time (nothing sent, no restart),
// restarted when its port changes, the lab's old unit replaced, a VM with
// no server named with the fix, and removed without a trace.
func TestAppOnLabVM(t *testing.T) {
	labtest.RequireVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p := labmachine.New(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), t.TempDir(), labtest.Cache())
	const vm = "appvm"
	t.Cleanup(func() { p.Delete(context.Background(), vm) })
	if _, err := p.Launch(ctx, machine.Spec{Name: vm}); err != nil {
		t.Fatal(err)
	}
	sh := func(script string) string {
		t.Helper()
		out, err := p.Exec(ctx, vm, nil, "sh", "-c", script)
		if err != nil {
			t.Fatalf("%s: %v: %s", script, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	get := func(port string) string {
		t.Helper()
		for range 50 {
			if out, err := p.Exec(ctx, vm, nil, "busybox", "wget", "-qO-", "http://127.0.0.1:"+port+"/"); err == nil {
				return string(out)
			}
			time.Sleep(200 * time.Millisecond)
		}
		return ""
	}
	// A VM onboarded before every VM got the app had it under the lab's name.
	sh("cat > /etc/systemd/system/meshvm-lab-app.service <<'EOF'\n[Service]\nExecStart=/bin/busybox httpd -f -p 8000 -h /\n[Install]\nWantedBy=multi-user.target\nEOF\n" +
		"systemctl daemon-reload && systemctl enable --now meshvm-lab-app.service")

	got, err := ensureApp(ctx, p, vm, 8000)
	if err != nil || !strings.Contains(got, "on port 8000 (meshvm-app.service installed and started)") {
		t.Fatalf("first: got %q, %v", got, err)
	}
	if body := get("8000"); body != "hello from appvm\n" {
		t.Errorf("GET :8000: got %q, want the app's page", body)
	}
	if left := sh("ls /etc/systemd/system/meshvm-lab-app.service 2>&1 || true"); !strings.Contains(left, "No such file") {
		t.Errorf("the lab's old unit is still there: %s", left)
	}
	// The lab's Debian has no ps: the owner of the server's /proc entry is its uid.
	if uid := strings.TrimSpace(sh("stat -c %u /proc/$(systemctl show -p MainPID --value meshvm-app.service)")); uid == "" || uid == "0" {
		t.Errorf("the app runs as uid %q, want an unprivileged user", uid)
	}
	pid := sh("systemctl show -p MainPID --value meshvm-app.service")

	got, err = ensureApp(ctx, p, vm, 8000)
	if err != nil || !strings.Contains(got, "(meshvm-app.service unchanged)") {
		t.Errorf("second: got %q, %v, want unchanged", got, err)
	}
	if again := sh("systemctl show -p MainPID --value meshvm-app.service"); again != pid {
		t.Errorf("an unchanged app was restarted: pid %s, was %s", again, pid)
	}

	// A new port is a new unit: the running server must move to it.
	if got, err = ensureApp(ctx, p, vm, 8001); err != nil || !strings.Contains(got, "installed and started") {
		t.Fatalf("port 8001: got %q, %v", got, err)
	}
	if body := get("8001"); body != "hello from appvm\n" {
		t.Errorf("GET :8001 after the port changed: got %q, want the app there", body)
	}

	// No server on the VM: the step fails naming the fix and leaves no unit.
	const servers = "for b in /usr/bin/python3 /bin/busybox; do [ -e $b$from ] && mv $b$from $b$to; done; true"
	sh("systemctl stop meshvm-app.service; rm -f /etc/systemd/system/meshvm-app.service; from= to=.away; " + servers)
	_, err = ensureApp(ctx, p, vm, 8000)
	sh("from=.away to=; " + servers)
	if err == nil || !strings.Contains(err.Error(), "neither python3 nor busybox") || !strings.Contains(err.Error(), "install python3") || !strings.Contains(err.Error(), "app: false") {
		t.Errorf("no server: got %v, want the fix named", err)
	}
	if left := sh("ls /etc/systemd/system/meshvm-app.service 2>&1 || true"); !strings.Contains(left, "No such file") {
		t.Errorf("a unit that cannot serve was left: %s", left)
	}

	if _, err := ensureApp(ctx, p, vm, 8000); err != nil {
		t.Fatal(err)
	}
	if removed, err := removeApp(ctx, p, vm); err != nil || !removed {
		t.Fatalf("remove: %v, %v", removed, err)
	}
	if left := sh("systemctl is-active meshvm-app.service || true; ls /etc/systemd/system/meshvm-app.service /srv/meshvm-app 2>&1 || true"); strings.HasPrefix(left, "active") || strings.Count(left, "No such file") != 2 {
		t.Errorf("after remove: %s", left)
	}
	if removed, err := removeApp(ctx, p, vm); err != nil || removed {
		t.Errorf("second remove: %v, %v, want nothing to do", removed, err)
	}
}
