package vmfiles

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A hard link planted at an allowlisted path (istio-proxy owns /etc/certs)
// to a root-only file must not let a delivery reveal that file's digest, nor
// change its owner or mode when the declared digest matches: the name is
// replaced by a new file and the linked one is left exactly as it was.
func TestHardLinkAtTargetLeavesLinkedFileAlone(t *testing.T) {
	s, dir := sandbox(t)
	secret := []byte("root:$y$j9T$secret-hash:19000:0:99999:7:::\n")
	secretPath := filepath.Join(dir, "etc/shadow")
	must(t, os.WriteFile(secretPath, secret, 0o600))
	must(t, os.Chown(secretPath, 0, 0))
	target := filepath.Join(dir, "etc/certs/root-cert.pem")
	must(t, os.Link(secretPath, target))

	stats, err := s.Stat([]string{"/etc/certs/root-cert.pem"})
	must(t, err)
	if !stats[0].Exists || stats[0].SHA256 != "" {
		t.Errorf("stat of a hard-linked file: got %+v, want it present with no digest", stats[0])
	}

	h := Header{Path: "/etc/certs/root-cert.pem", Size: uint64(len(secret)), SHA256: digestOf(secret)}
	out, err := s.Put(h, bytes.NewReader(secret))
	if err != nil || out != Written {
		t.Fatalf("got %v, %v, want the name replaced (Written)", out, err)
	}
	linked := statT(t, secretPath)
	if linked.Mode&0o7777 != 0o600 || linked.Uid != 0 || linked.Gid != 0 || linked.Nlink != 1 {
		t.Errorf("linked file: got mode %#o uid %d gid %d links %d, want 0600 root:root and no other name", linked.Mode&0o7777, linked.Uid, linked.Gid, linked.Nlink)
	}
	if got, _ := os.ReadFile(secretPath); !bytes.Equal(got, secret) {
		t.Errorf("linked file content changed: %q", got)
	}
	delivered := statT(t, target)
	if delivered.Ino == linked.Ino || delivered.Uid != 1337 || delivered.Mode&0o7777 != 0o644 {
		t.Errorf("delivered file: got inode %d (linked %d) uid %d mode %#o, want a new inode 0644 istio-proxy", delivered.Ino, linked.Ino, delivered.Uid, delivered.Mode&0o7777)
	}
}

// The token's root-only copy is what root-side steps trust: a link from the
// proxy-writable /run path to it must not hand it to istio-proxy.
func TestHardLinkToThePersistedTokenIsReplaced(t *testing.T) {
	s, dir := sandbox(t)
	tok := []byte("eyJhbGciOi.token.sig")
	h := Header{Path: "/var/run/secrets/tokens/istio-token", Size: uint64(len(tok)), SHA256: digestOf(tok)}
	_, err := s.Put(h, bytes.NewReader(tok))
	must(t, err)
	runTok, kept := filepath.Join(dir, "run/secrets/tokens/istio-token"), filepath.Join(dir, "var/lib/meshvm/secrets/istio-token")
	must(t, os.Remove(runTok))
	must(t, os.Link(kept, runTok))

	out, err := s.Put(h, bytes.NewReader(tok))
	if err != nil || out != Written {
		t.Fatalf("got %v, %v, want the planted link replaced (Written)", out, err)
	}
	if st := statT(t, kept); st.Uid != 0 || st.Mode&0o7777 != 0o600 || st.Nlink != 1 {
		t.Errorf("root-only copy: got uid %d mode %#o links %d, want root 0600 with one name", st.Uid, st.Mode&0o7777, st.Nlink)
	}
	if st := statT(t, runTok); st.Uid != 1337 {
		t.Errorf("delivered token: got uid %d, want istio-proxy's", st.Uid)
	}
}

// Two deliveries of one path at once: the second is refused with ErrBusy
// while the first streams, the first's temporary file survives it and the
// sweep, and the first completes.
func TestConcurrentDeliveriesToOnePath(t *testing.T) {
	s, dir := sandbox(t)
	data := bytes.Repeat([]byte("KEY='value'\n"), 1000)
	h := Header{Path: "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json", Size: uint64(len(data)), SHA256: digestOf(data)}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { _, err := s.Put(h, pr); done <- err }()
	_, err := pw.Write(data[:100])
	must(t, err)
	envoyDir := filepath.Join(dir, "var/lib/istio/envoy")
	temp := waitForTemp(t, envoyDir)

	other := []byte("{}")
	_, err = s.Put(Header{Path: h.Path, Size: uint64(len(other)), SHA256: digestOf(other)}, bytes.NewReader(other))
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "retry when it has finished") {
		t.Fatalf("second delivery: got %v, want ErrBusy saying to retry", err)
	}
	s.SweepInterrupted()
	if _, err := os.Stat(filepath.Join(envoyDir, temp)); err != nil {
		t.Fatalf("the running delivery's temporary file is gone: %v", err)
	}
	_, err = pw.Write(data[100:])
	must(t, err)
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("first delivery: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(envoyDir, "envoy_bootstrap_tmpl.json")); !bytes.Equal(got, data) {
		t.Errorf("got %d bytes, want the first delivery's %d", len(got), len(data))
	}
	// The path is free again.
	if _, err := s.Put(Header{Path: h.Path, Size: uint64(len(other)), SHA256: digestOf(other)}, bytes.NewReader(other)); err != nil {
		t.Errorf("delivery after the first finished: %v", err)
	}
}

func waitForTemp(t *testing.T, dir string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".meshvm-tmp-") {
				return e.Name()
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no temporary file appeared")
	return ""
}

func statT(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(p)
	must(t, err)
	return fi.Sys().(*syscall.Stat_t)
}
