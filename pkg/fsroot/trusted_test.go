package fsroot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadTrusted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the files must be root's")
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "var/lib/meshvm"), 0o700)
	os.MkdirAll(filepath.Join(dir, "var/lib/istio/envoy"), 0o755)
	os.WriteFile(filepath.Join(dir, "var/lib/meshvm/ok"), []byte("A=1\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "var/lib/istio/envoy/cluster.env"), []byte("A=1\n"), 0o644)
	r, _ := New(dir)
	if got, err := r.ReadTrusted("/var/lib/meshvm/ok", 100); err != nil || string(got) != "A=1\n" {
		t.Fatalf("got %q, %v, want the content", got, err)
	}

	// A directory the proxy user owns: it could swap the file at any time.
	os.Chown(filepath.Join(dir, "var/lib/istio/envoy"), 1337, 1337)
	// A file root owns but others may write.
	os.WriteFile(filepath.Join(dir, "var/lib/meshvm/wide"), nil, 0o600)
	os.Chmod(filepath.Join(dir, "var/lib/meshvm/wide"), 0o666)
	// A file another user owns in a root-only directory.
	os.WriteFile(filepath.Join(dir, "var/lib/meshvm/theirs"), nil, 0o600)
	os.Chown(filepath.Join(dir, "var/lib/meshvm/theirs"), 1337, 1337)
	// Links, even root's, are not followed.
	os.Symlink("ok", filepath.Join(dir, "var/lib/meshvm/link"))
	os.Symlink("meshvm", filepath.Join(dir, "var/lib/dirlink"))
	syscall.Mkfifo(filepath.Join(dir, "var/lib/meshvm/fifo"), 0o600)
	os.Mkdir(filepath.Join(dir, "var/lib/meshvm/dir"), 0o700)
	for _, p := range []string{"/var/lib/istio/envoy/cluster.env", "/var/lib/meshvm/wide", "/var/lib/meshvm/theirs",
		"/var/lib/meshvm/link", "/var/lib/dirlink/ok", "/var/lib/meshvm/fifo", "/var/lib/meshvm/dir"} {
		if _, err := r.ReadTrusted(p, 100); !errors.Is(err, ErrUntrusted) {
			t.Errorf("%s: got %v, want ErrUntrusted", p, err)
		}
	}
	if _, err := r.ReadTrusted("/var/lib/meshvm/missing", 100); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: got %v, want ErrNotExist", err)
	}
	if _, err := r.ReadTrusted("/var/lib/meshvm/ok", 3); !errors.Is(err, ErrTooLarge) {
		t.Errorf("4 bytes with max 3: got %v, want ErrTooLarge", err)
	}
}

func TestReadLimited(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etc/certs"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc/certs/big"), []byte(strings.Repeat("x", 2000)), 0o644)
	syscall.Mkfifo(filepath.Join(dir, "etc/certs/fifo"), 0o600)
	os.Symlink("/dev/zero", filepath.Join(dir, "etc/certs/zero"))
	r, _ := New(dir)
	if _, err := r.ReadLimited("/etc/certs/big", 1000); !errors.Is(err, ErrTooLarge) {
		t.Errorf("big: got %v, want ErrTooLarge", err)
	}
	if got, err := r.ReadLimited("/etc/certs/big", 2000); err != nil || len(got) != 2000 {
		t.Errorf("big within max: got %d bytes, %v", len(got), err)
	}
	// A FIFO opens at once with O_NONBLOCK and is refused: it never blocks.
	if _, err := r.ReadLimited("/etc/certs/fifo", 1000); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("fifo: got %v, want not a regular file", err)
	}
	if _, err := r.ReadLimited("/etc/certs/zero", 1000); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("link to /dev/zero: got %v, want ErrUnsafePath", err)
	}
}
