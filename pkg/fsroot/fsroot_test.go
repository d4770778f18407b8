package fsroot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

func newRoot(t *testing.T) (*Root, string) {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"etc", "var/lib/istio/envoy", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

// onlyFile asserts dir holds exactly the named entries (no temporary files).
func onlyFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("directory %s holds %v, want %v", dir, got, want)
	}
}

func TestWriteFileAtomicAndVerified(t *testing.T) {
	r, dir := newRoot(t)
	const p = "/var/lib/istio/envoy/cluster.env"
	old := []byte("OLD=1\n")
	if err := r.WriteBytes(p, old, WriteOptions{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	newData := []byte("NEW=2\n")
	tests := []struct {
		name    string
		src     io.Reader
		opts    WriteOptions
		wantErr string
	}{
		{"short content", bytes.NewReader(newData[:3]), WriteOptions{Mode: 0o644, Size: int64(len(newData)), SHA256: sum(newData)}, "size mismatch"},
		{"long content", bytes.NewReader(append(newData, 'x')), WriteOptions{Mode: 0o644, Size: int64(len(newData)), SHA256: sum(newData)}, "size mismatch"},
		{"digest mismatch", bytes.NewReader(newData), WriteOptions{Mode: 0o644, Size: int64(len(newData)), SHA256: sum(old)}, "transfer was corrupted"},
		{"reader fails midway", io.MultiReader(bytes.NewReader(newData[:2]), failingReader{}), WriteOptions{Mode: 0o644, Size: int64(len(newData))}, "stream broke"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.WriteFile(p, tt.src, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
			got, _ := os.ReadFile(filepath.Join(dir, p))
			if !bytes.Equal(got, old) {
				t.Errorf("file now holds %q, want the old content %q", got, old)
			}
			onlyFiles(t, filepath.Join(dir, "var/lib/istio/envoy"), "cluster.env")
		})
	}
	res, err := r.WriteFile(p, bytes.NewReader(newData), WriteOptions{Mode: 0o600, Size: int64(len(newData)), SHA256: sum(newData)})
	if err != nil {
		t.Fatal(err)
	}
	if res.SHA256 != sum(newData) || res.Size != int64(len(newData)) {
		t.Errorf("got result %+v, want size %d sha %s", res, len(newData), sum(newData))
	}
	st, _ := os.Stat(filepath.Join(dir, p))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("got mode %v, want 0600", st.Mode())
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("stream broke") }

func TestWriteFileSweepsLeftoverTemps(t *testing.T) {
	r, dir := newRoot(t)
	envoy := filepath.Join(dir, "var/lib/istio/envoy")
	// What a killed agent leaves behind.
	leftover := filepath.Join(envoy, ".cluster.env"+tempMarker+"deadbeef")
	if err := os.WriteFile(leftover, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBytes("/var/lib/istio/envoy/cluster.env", []byte("A=1\n"), WriteOptions{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	onlyFiles(t, envoy, "cluster.env")
}

func TestPlantedSymlinks(t *testing.T) {
	r, dir := newRoot(t)
	secret := filepath.Join(dir, "etc/shadow")
	if err := os.WriteFile(secret, []byte("root:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	envoy := filepath.Join(dir, "var/lib/istio/envoy")

	// A symlink at the final component is replaced, never written through.
	if err := os.Symlink(secret, filepath.Join(envoy, "cluster.env")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBytes("/var/lib/istio/envoy/cluster.env", []byte("A=1\n"), WriteOptions{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(secret); string(got) != "root:secret\n" {
		t.Errorf("write went through the planted link: /etc/shadow now %q", got)
	}
	if fi, _ := os.Lstat(filepath.Join(envoy, "cluster.env")); fi.Mode()&os.ModeSymlink != 0 {
		t.Errorf("the planted link is still there")
	}

	// A symlinked directory planted by a non-root user is refused.
	if err := os.MkdirAll(filepath.Join(dir, "var/lib/istio/config-real"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "var/lib/istio/config")
	if err := os.Symlink("/etc", link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 1337, 1337); err != nil {
		t.Fatal(err)
	}
	err := r.WriteBytes("/var/lib/istio/config/mesh", []byte("x"), WriteOptions{Mode: 0o644})
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("got %v, want ErrUnsafePath for a link owned by uid 1337", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/mesh")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the write landed in /etc through the planted link")
	}

	// A root-owned link in a directory others can write is refused too.
	if err := os.Chmod(filepath.Join(dir, "var/lib/istio"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBytes("/var/lib/istio/config/mesh", []byte("x"), WriteOptions{Mode: 0o644}); !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("got %v, want ErrUnsafePath for a link in a world-writable directory", err)
	}
}

func TestTrustedSymlinksAreFollowedWithinRoot(t *testing.T) {
	r, dir := newRoot(t)
	// /var/run -> /run and /etc/istio -> /var/lib/istio, as on a real VM.
	if err := os.Symlink("/run", filepath.Join(dir, "var/run")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../var/lib/istio", filepath.Join(dir, "etc/istio")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "var/lib/istio/config"), 0o755); err != nil {
		t.Fatal(err)
	}
	dirOpts := DirOptions{Mode: 0o755}
	res, err := r.WriteFile("/var/run/secrets/tokens/istio-token", strings.NewReader("tok"), WriteOptions{Mode: 0o600, Size: 3, Dir: &dirOpts})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(res.CreatedDirs, ","), "/run/secrets,/run/secrets/tokens"; got != want {
		t.Errorf("got created dirs %s, want %s", got, want)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "run/secrets/tokens/istio-token")); string(got) != "tok" {
		t.Errorf("got %q under /run, want the token", got)
	}
	if err := r.WriteBytes("/etc/istio/config/mesh", []byte("m"), WriteOptions{Mode: 0o640}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "var/lib/istio/config/mesh")); string(got) != "m" {
		t.Errorf("got %q, want the mesh file under /var/lib/istio", got)
	}
	// An absolute link never escapes the root: /run is the root's /run.
	if _, err := os.Stat("/run/secrets/tokens/istio-token"); err == nil {
		if b, _ := os.ReadFile("/run/secrets/tokens/istio-token"); string(b) == "tok" {
			t.Errorf("the write escaped to the host's /run")
		}
	}
	// A link climbing above the root stays at the root, like a chroot.
	if err := os.Symlink("../../../../..", filepath.Join(dir, "var/lib/istio/up")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBytes("/var/lib/istio/up/escaped", []byte("x"), WriteOptions{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "escaped")); err != nil {
		t.Errorf("got %v, want the file at the root of the sandbox", err)
	}
}

func TestPathValidation(t *testing.T) {
	r, _ := newRoot(t)
	for _, p := range []string{"relative/path", "/etc/../etc/passwd", "/"} {
		if err := r.WriteBytes(p, []byte("x"), WriteOptions{Mode: 0o644}); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("%q: got %v, want ErrUnsafePath", p, err)
		}
	}
}

func TestSetgidSurvivesChown(t *testing.T) {
	r, dir := newRoot(t)
	if err := os.MkdirAll(filepath.Join(dir, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBytes("/usr/local/bin/pilot-agent", []byte("elf"), WriteOptions{Mode: 0o755 | os.ModeSetgid, UID: 0, GID: 1337}); err != nil {
		t.Fatal(err)
	}
	st, err := r.Stat("/usr/local/bin/pilot-agent")
	if err != nil {
		t.Fatal(err)
	}
	if UnixMode(st.Mode) != 0o2755 || st.GID != 1337 {
		t.Errorf("got mode %#o gid %d, want 02755 gid 1337", UnixMode(st.Mode), st.GID)
	}
	changed, err := r.Chown("/usr/local/bin/pilot-agent", 0, 1337, 0o755|os.ModeSetgid, false)
	if err != nil || changed {
		t.Errorf("got changed=%v err=%v, want an unchanged no-op", changed, err)
	}
}

func TestRemoveAllDoesNotFollowLinks(t *testing.T) {
	r, dir := newRoot(t)
	keep := filepath.Join(dir, "etc/keep")
	os.WriteFile(keep, []byte("k"), 0o644)
	os.MkdirAll(filepath.Join(dir, "var/lib/istio/proxy"), 0o755)
	os.Symlink(filepath.Join(dir, "etc"), filepath.Join(dir, "var/lib/istio/proxy/etc-link"))
	if err := r.RemoveAll("/var/lib/istio"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("RemoveAll followed a link: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "var/lib/istio")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want /var/lib/istio gone", err)
	}
}

// macOS answers unlink of a directory with EPERM, not Linux's EISDIR:
// Remove and RemoveAll must still recognise the directory, and EPERM on a
// file must stay an error.
func TestIsDirectoryAcceptsMacOSUnlinkError(t *testing.T) {
	_, dir := newRoot(t)
	if err := os.WriteFile(filepath.Join(dir, "etc/file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(filepath.Join(dir, "etc"), unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := os.Mkdir(filepath.Join(dir, "etc/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"sub", unix.EISDIR, true},
		{"sub", unix.EPERM, true},
		{"file", unix.EPERM, false},
		{"sub", unix.EACCES, false},
	} {
		if got := isDirectory(fd, c.name, c.err); got != c.want {
			t.Errorf("isDirectory(%s, %v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

// Every way OpenDir fails closes the descriptor it held: a missing
// directory, a file in the path, a link loop; a success returns the one
// descriptor.
func TestOpenDirHoldsNoDescriptorOnFailure(t *testing.T) {
	r, dir := newRoot(t)
	if err := os.WriteFile(filepath.Join(dir, "etc/file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{"a", "/etc/b"}, {"b", "/etc/a"}} {
		if err := os.Symlink(l[1], filepath.Join(dir, "etc", l[0])); err != nil {
			t.Fatal(err)
		}
	}
	open := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("no /proc/self/fd: %v", err)
		}
		return len(ents)
	}
	before := open()
	for _, tc := range []struct {
		p    string
		opts DirOptions
		want error
	}{
		{"/var/lib/missing/deeper", DirOptions{}, fs.ErrNotExist},
		{"/etc/file/below", DirOptions{Create: true, Mode: 0o755}, ErrUnsafePath},
		{"/etc/a/x", DirOptions{}, nil},
	} {
		fd, _, err := r.OpenDir(tc.p, tc.opts)
		if err == nil || fd != -1 || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: got fd %d, %v; want -1 and %v", tc.p, fd, err, tc.want)
		}
	}
	if after := open(); after != before {
		t.Errorf("%d descriptors open after the failures, %d before", after, before)
	}
	fd, created, err := r.OpenDir("/var/lib/istio/envoy/new", DirOptions{Create: true, Mode: 0o755})
	if err != nil || len(created) != 1 || created[0] != "/var/lib/istio/envoy/new" {
		t.Fatalf("got %d %v %v", fd, created, err)
	}
	CloseFD(fd)
	if after := open(); after != before {
		t.Errorf("%d descriptors open after a success closed, %d before", after, before)
	}
}
