package server

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// A FIFO or an endless file istio-proxy plants as cluster.env neither
// blocks status nor is read without bound.
func TestSvcIPReadsClusterEnvBounded(t *testing.T) {
	dir := t.TempDir()
	envDir := filepath.Join(dir, "var/lib/istio/envoy")
	if err := os.MkdirAll(envDir, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := fsroot.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(envDir, "cluster.env")
	os.WriteFile(env, []byte("ISTIO_SVC_IP=10.0.0.7\n"), 0o644)
	if got := svcIP(root); got != "10.0.0.7" {
		t.Fatalf("svcIP of a plain cluster.env: %q", got)
	}
	for name, plant := range map[string]func() error{
		"fifo": func() error { return syscall.Mkfifo(env, 0o644) },
		"huge": func() error {
			return os.WriteFile(env, append(bytes.Repeat([]byte("A=1\n"), 1<<19), "ISTIO_SVC_IP=10.0.0.8\n"...), 0o644)
		},
		"/dev/zero": func() error { return os.Symlink("/dev/zero", env) },
	} {
		os.Remove(env)
		if err := plant(); err != nil {
			t.Fatal(err)
		}
		done := make(chan string, 1)
		go func() { done <- svcIP(root) }()
		select {
		case got := <-done:
			if got != "" {
				t.Errorf("%s: svcIP read %q, want nothing", name, got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: svcIP blocked", name)
		}
	}
}
