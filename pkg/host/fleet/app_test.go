package fleet

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
)

// freePort is a TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// serveApp runs the app unit's server command with only the given tools on
// PATH, as its ExecStart would.
func serveApp(t *testing.T, dir string, port int, tools map[string]string) *exec.Cmd {
	t.Helper()
	bin := t.TempDir()
	for name, target := range tools {
		if err := os.Symlink(target, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("/bin/sh", "-c", appServerCommand(dir, port))
	cmd.Env = []string{"PATH=" + bin}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// The unit serves with python3 when the VM has it, as the recipe does.
func TestAppServesWithPython3(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on this machine")
	}
	// pyenv's shims need pyenv on PATH: take the interpreter itself.
	out, err := exec.Command(py, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("hello from vm1\n"), 0o644)
	port := freePort(t)
	serveApp(t, dir, port, map[string]string{"python3": strings.TrimSpace(string(out))})
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "hello from vm1\n" {
				t.Errorf("GET %s: got %d %q, want 200 and the page", url, resp.StatusCode, body)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("python3 never answered on %s: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Without python3 the unit falls back to busybox httpd on the same port and
// directory (the lab's Debian has only busybox).
func TestAppFallsBackToBusybox(t *testing.T) {
	dir := t.TempDir()
	args := filepath.Join(dir, "args")
	fake := filepath.Join(t.TempDir(), "busybox")
	// A stand-in that records how it was started: this host need not have busybox.
	os.WriteFile(fake, []byte("#!/bin/sh\necho \"$PWD $*\" > "+args+"\n"), 0o755)
	cmd := serveApp(t, dir, 8000, map[string]string{"busybox": fake})
	cmd.Wait()
	got, err := os.ReadFile(args)
	if want := dir + " httpd -f -p 8000 -h .\n"; err != nil || string(got) != want {
		t.Errorf("busybox ran as %q (%v), want %q", got, err, want)
	}
}

// The app's unit names the port and VM, runs unprivileged, and is rendered
// the same every time (an unchanged unit is not sent again).
func TestAppUnit(t *testing.T) {
	u := appUnit("vm1", 8000)
	for _, want := range []string{"DynamicUser=yes", "python3 -m http.server 8000", "busybox httpd -f -p 8000", "hello from vm1", "WantedBy=multi-user.target"} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
	if appUnit("vm1", 8000) != u || appUnit("vm1", 9000) == u {
		t.Error("the unit is not a function of VM and port")
	}
}

// ownApps lists the VMs hostctl runs no app on.
func TestOwnApps(t *testing.T) {
	cfg := config.Default()
	off := false
	cfg.VMs = append(cfg.VMs, config.VM{Name: "vm2", App: &off})
	if got := strings.Join(ownApps(cfg), ","); got != "vm2" {
		t.Errorf("got %q, want vm2", got)
	}
}
