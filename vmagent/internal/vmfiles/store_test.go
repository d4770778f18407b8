package vmfiles

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
)

func digestOf(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// sandbox is a machine root after Install: the istio-proxy account and the
// directories exist.
func sandbox(t testing.TB) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"etc/certs", "var/lib/istio/envoy", "var/lib/istio/config", "usr/local/bin", "run", "var/lib"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Symlink("/run", filepath.Join(dir, "var/run")))
	must(t, os.Symlink("/var/lib/istio", filepath.Join(dir, "etc/istio")))
	must(t, os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:1337:1337::/var/lib/istio:/usr/sbin/nologin\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\nistio-proxy:x:1337:\n"), 0o644))
	root, err := fsroot.New(dir)
	must(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return NewStore(log, root, sysusers.New(root), agentstate.New(root)), dir
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPutValidation(t *testing.T) {
	s, _ := sandbox(t)
	data := []byte("KEY='v'\n")
	good := Header{Path: "/var/lib/istio/envoy/cluster.env", Size: uint64(len(data)), SHA256: digestOf(data)}
	tests := []struct {
		name    string
		edit    func(*Header)
		class   error
		wantMsg string
	}{
		{"not allowlisted", func(h *Header) { h.Path = "/etc/passwd" }, agenterr.PermissionDenied, "not on the agent's allowlist"},
		{"dot-dot traversal", func(h *Header) { h.Path = "/var/lib/istio/envoy/../../../../etc/passwd" }, agenterr.InvalidArgument, "not canonical"},
		{"dot-dot to an allowlisted name", func(h *Header) { h.Path = "/usr/local/bin/../bin/envoy" }, agenterr.InvalidArgument, "not canonical"},
		{"relative path", func(h *Header) { h.Path = "var/lib/istio/envoy/cluster.env" }, agenterr.InvalidArgument, "not canonical"},
		{"empty path", func(h *Header) { h.Path = "" }, agenterr.InvalidArgument, "empty"},
		{"oversized", func(h *Header) { h.Size = 2 << 20 }, agenterr.InvalidArgument, "exceeds"},
		{"bad digest", func(h *Header) { h.SHA256 = "abc" }, agenterr.InvalidArgument, "64 hex"},
		{"mode too wide", func(h *Header) { h.Mode = 0o666 }, agenterr.InvalidArgument, "wider than"},
		{"setuid", func(h *Header) { h.Mode = 0o4755 }, agenterr.InvalidArgument, "wider than"},
		{"owner not allowed", func(h *Header) { h.Owner = "nobody" }, agenterr.InvalidArgument, "owner \"nobody\" not allowed"},
		{"token world-readable", func(h *Header) { h.Path = "/var/run/secrets/tokens/istio-token"; h.Mode = 0o644 }, agenterr.InvalidArgument, "wider than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := good
			tt.edit(&h)
			_, err := s.Put(h, bytes.NewReader(data))
			if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("got %v, want a %v error containing %q", err, tt.class, tt.wantMsg)
			}
		})
	}
}

func TestPutWritesAppliesPolicyAndSkipsIdentical(t *testing.T) {
	s, dir := sandbox(t)
	bin := bytes.Repeat([]byte("pilot-agent "), 10000)
	h := Header{Path: "/usr/local/bin/pilot-agent", Size: uint64(len(bin)), SHA256: digestOf(bin)}
	out, err := s.Put(h, bytes.NewReader(bin))
	if err != nil || out != Written {
		t.Fatalf("got %v, %v, want Written", out, err)
	}
	st, err := os.Stat(filepath.Join(dir, "usr/local/bin/pilot-agent"))
	must(t, err)
	if st.Mode()&os.ModeSetgid == 0 || st.Mode().Perm() != 0o755 {
		t.Errorf("got mode %v, want setgid 0755 by default", st.Mode())
	}
	// Changed mode on disk converges without resending; the body is never read.
	must(t, os.Chmod(filepath.Join(dir, "usr/local/bin/pilot-agent"), 0o700))
	out, err = s.Put(h, failIfRead{t})
	if err != nil || out != Unchanged {
		t.Fatalf("got %v, %v, want Unchanged", out, err)
	}
	st, _ = os.Stat(filepath.Join(dir, "usr/local/bin/pilot-agent"))
	if st.Mode().Perm() != 0o755 {
		t.Errorf("got mode %v after an unchanged put, want it converged to 0755", st.Mode())
	}
	stats, err := s.Stat([]string{"/usr/local/bin/pilot-agent", "/usr/local/bin/envoy"})
	must(t, err)
	if !stats[0].Exists || stats[0].SHA256 != h.SHA256 || stats[0].Group != "istio-proxy" || stats[1].Exists {
		t.Errorf("got stats %+v, want pilot-agent present with its digest and group istio-proxy, envoy absent", stats)
	}
}

type failIfRead struct{ t *testing.T }

func (f failIfRead) Read([]byte) (int, error) {
	f.t.Error("the body was read although the file was identical")
	return 0, io.EOF
}

func TestPutMismatchKeepsOldFile(t *testing.T) {
	s, dir := sandbox(t)
	old := []byte("old mesh\n")
	must(t, os.WriteFile(filepath.Join(dir, "var/lib/istio/config/mesh"), old, 0o640))
	sent := []byte("new mesh\n")
	h := Header{Path: "/etc/istio/config/mesh", Size: uint64(len(sent)), SHA256: digestOf([]byte("something else"))}
	// The sentinels, which the server's one table sends as InvalidArgument
	// (its TestDeliveryFailuresLeaveWithTheirCode).
	if _, err := s.Put(h, bytes.NewReader(sent)); !errors.Is(err, fsroot.ErrDigestMismatch) {
		t.Fatalf("got %v for a digest mismatch, want fsroot.ErrDigestMismatch", err)
	}
	// Too short: the size sentinel.
	h = Header{Path: "/etc/istio/config/mesh", Size: uint64(len(sent)) + 5, SHA256: digestOf(sent)}
	if _, err := s.Put(h, bytes.NewReader(sent)); !errors.Is(err, fsroot.ErrSizeMismatch) {
		t.Fatalf("got %v for a short body, want fsroot.ErrSizeMismatch", err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "var/lib/istio/config/mesh"))
	if !bytes.Equal(got, old) {
		t.Errorf("got %q, want the old content kept", got)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "var/lib/istio/config"))
	if len(ents) != 1 {
		t.Errorf("got %d entries in the config directory, want only mesh (no temporary file)", len(ents))
	}
}

func TestTokenIsPersistedForReboot(t *testing.T) {
	s, dir := sandbox(t)
	tok := []byte("eyJhbGciOi.token.sig")
	h := Header{Path: "/var/run/secrets/tokens/istio-token", Size: uint64(len(tok)), SHA256: digestOf(tok)}
	if _, err := s.Put(h, bytes.NewReader(tok)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"run/secrets/tokens/istio-token", "var/lib/meshvm/secrets/istio-token"} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: got mode %v, want 0600", p, st.Mode())
		}
	}
	rec, err := agentstate.New(s.root).Load()
	must(t, err)
	if !strings.Contains(strings.Join(rec.CreatedDirs, ","), "/run/secrets/tokens") {
		t.Errorf("got created dirs %v, want /run/secrets/tokens recorded for uninstall", rec.CreatedDirs)
	}
}

// An agent killed mid-transfer cannot clean up; the next agent does, and
// touches nothing else.
func TestSweepInterruptedRemovesOnlyLeftovers(t *testing.T) {
	s, dir := sandbox(t)
	bin := filepath.Join(dir, "usr/local/bin")
	must(t, os.MkdirAll(bin, 0o755))
	for name, data := range map[string]string{
		"envoy": "the old envoy", ".envoy.meshvm-tmp-0a1b2c": "half an envoy",
		".pilot-agent.meshvm-tmp-ffff": "half", ".profile": "someone else's dotfile",
	} {
		must(t, os.WriteFile(filepath.Join(bin, name), []byte(data), 0o600))
	}
	s.SweepInterrupted()
	entries, _ := os.ReadDir(bin)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if got := strings.Join(left, ","); got != ".profile,envoy" {
		t.Errorf("left %s, want .profile,envoy", got)
	}
	if b, _ := os.ReadFile(filepath.Join(bin, "envoy")); string(b) != "the old envoy" {
		t.Errorf("envoy = %q", b)
	}
}
