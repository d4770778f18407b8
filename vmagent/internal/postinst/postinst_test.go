package postinst

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

// userHosts is a hosts file a user edited by hand: no final newline.
const userHosts = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost\n# my own line\n10.1.2.3 build-server"

// debianRoot lays out the parts of a minimal Debian the postinst touches.
func debianRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the postinst sets owners")
	}
	for _, tool := range []string{"useradd", "groupadd", "userdel", "groupdel"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian package passwd)", tool)
		}
	}
	dir := t.TempDir()
	for _, d := range []string{"etc", "usr/local/bin", "usr/sbin", "var/lib", "var/log", "run"} {
		must(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(t, os.Symlink("/run", filepath.Join(dir, "var/run")))
	files := map[string]string{
		"etc/passwd":       "root:x:0:0:root:/root:/bin/bash\n",
		"etc/group":        "root:x:0:\n",
		"etc/shadow":       "root:*:19000:0:99999:7:::\n",
		"etc/gshadow":      "root:*::\n",
		"etc/hosts":        userHosts,
		"usr/sbin/nologin": "",
	}
	for p, c := range files {
		must(t, os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644))
	}
	must(t, os.Chmod(filepath.Join(dir, "etc/shadow"), 0o640))
	must(t, os.Chmod(filepath.Join(dir, "etc/gshadow"), 0o640))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type fixture struct {
	dir   string
	root  *fsroot.Root
	in    *Installer
	files *vmfiles.Store
}

func newFixture(t *testing.T, dir string) fixture {
	root, err := fsroot.New(dir)
	must(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	users := sysusers.New(root)
	state := agentstate.New(root)
	return fixture{
		dir:   dir,
		root:  root,
		in:    New(log, Options{Root: root, Users: users, State: state}),
		files: vmfiles.NewStore(log, root, users, state),
	}
}

var hosts = []hostsfile.Entry{
	{IP: netip.MustParseAddr("192.168.64.10"), Names: []string{"istiod.istio-system.svc"}},
	{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{"vm1"}},
}

// snapshot records every path below dir: type, owner, mode, content or link.
// The shadow tools' own backups (etc/passwd- ...) are left out: useradd and
// userdel rewrite them as part of their locking protocol.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.HasPrefix(rel, "etc/") && strings.HasSuffix(rel, "-") {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			h := sha256.Sum256(b)
			desc += " " + hex.EncodeToString(h[:8])
		}
		out[rel] = desc
		return nil
	})
	must(t, err)
	return out
}

func outcomes(rs []Result) map[string]Outcome {
	out := map[string]Outcome{}
	for _, r := range rs {
		out[r.Name] = r.Outcome
	}
	return out
}

func TestInstallTwiceThenUninstallRestoresByteForByte(t *testing.T) {
	dir := debianRoot(t)
	// A directory the user already had: Install adopts it, Uninstall restores it.
	must(t, os.MkdirAll(filepath.Join(dir, "var/log/istio"), 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "var/log/istio/old.log"), []byte("keep me\n"), 0o600))
	before := snapshot(t, dir)
	f := newFixture(t, dir)
	ctx := context.Background()

	dry := f.in.Install(ctx, true, hosts)
	for _, r := range dry {
		if r.Outcome != WouldChange && r.Outcome != Unchanged {
			t.Errorf("dry run step %s: got %v (%s), want would change or unchanged", r.Name, r.Outcome, r.Detail)
		}
	}
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Fatalf("a dry run changed the tree (-before +after):\n%s", diff)
	}

	first := f.in.Install(ctx, false, hosts)
	if AnyFailed(first) {
		t.Fatalf("install failed: %+v", first)
	}
	for _, name := range []string{"group", "user", "directories", "etc-istio-link", "mesh-config", "hosts", "unit"} {
		if got := outcomes(first)[name]; got != Changed {
			t.Errorf("first install step %s: got %v, want changed", name, got)
		}
	}

	// What the package's postinst would have left, done our way.
	u, ok, err := sysusers.New(f.root).LookupUser("istio-proxy")
	if err != nil || !ok {
		t.Fatalf("istio-proxy user: ok=%v err=%v", ok, err)
	}
	if u.Home != "/var/lib/istio" || u.Shell != "/usr/sbin/nologin" {
		t.Errorf("got home %q shell %q, want /var/lib/istio and no login", u.Home, u.Shell)
	}
	wantDirs := map[string]string{
		"var/lib/istio/envoy": "0755 istio", "var/lib/istio/config": "0755 istio", "var/lib/istio/proxy": "0755 istio",
		"var/log/istio": "0755 istio", "etc/certs": "0750 istio", "var/lib/meshvm/secrets": "0700 root",
	}
	for p, want := range wantDirs {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		owner := "root"
		if fi.Sys().(*syscall.Stat_t).Uid == uint32(u.UID) {
			owner = "istio"
		}
		if got := fmt.Sprintf("%04o %s", fi.Mode().Perm(), owner); got != want {
			t.Errorf("%s: got %s, want %s", p, got, want)
		}
	}
	if target, _ := os.Readlink(filepath.Join(dir, "etc/istio")); target != "/var/lib/istio" {
		t.Errorf("got /etc/istio -> %q, want /var/lib/istio", target)
	}
	gotHosts, _ := os.ReadFile(filepath.Join(dir, "etc/hosts"))
	if !bytes.HasPrefix(gotHosts, []byte(userHosts)) || !bytes.Contains(gotHosts, []byte("192.168.64.10\tistiod.istio-system.svc")) {
		t.Errorf("hosts file not merged as expected:\n%s", gotHosts)
	}
	// The sidecar's start puts the block back from this record after cloud-init.
	if rec, err := agentstate.New(f.root).Load(); err != nil || !cmp.Equal(rec.Hosts, hosts, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Errorf("got recorded hosts %v (%v), want %v", rec.Hosts, err, hosts)
	}
	unit, _ := os.ReadFile(filepath.Join(dir, UnitPath))
	if !bytes.Contains(unit, []byte("User=istio-proxy")) || !bytes.Contains(unit, []byte("ExecStartPre=+/usr/local/bin/vmagent sidecar prepare")) {
		t.Errorf("unit file unexpected:\n%s", unit)
	}
	if target, _ := os.Readlink(filepath.Join(dir, UnitLink)); target != UnitPath {
		t.Errorf("got enable link -> %q, want %s", target, UnitPath)
	}

	second := f.in.Install(ctx, false, hosts)
	for _, r := range second {
		if r.Outcome != Unchanged {
			t.Errorf("second install step %s: got %v (%s), want unchanged", r.Name, r.Outcome, r.Detail)
		}
	}

	// Deliver files too: Uninstall removes what the agent put there.
	for path, data := range map[string][]byte{
		"/usr/local/bin/pilot-agent":          []byte("#!/bin/true\n"),
		"/var/run/secrets/tokens/istio-token": []byte("a.b.c"),
		"/etc/istio/config/mesh":              []byte("defaultConfig: {}\n"),
	} {
		h := sha256.Sum256(data)
		if _, err := f.files.Put(vmfiles.Header{Path: path, Size: uint64(len(data)), SHA256: hex.EncodeToString(h[:])}, bytes.NewReader(data)); err != nil {
			t.Fatalf("deliver %s: %v", path, err)
		}
	}
	// pilot-agent writes into the directories it owns.
	must(t, os.WriteFile(filepath.Join(dir, "etc/certs/key.pem"), []byte("k"), 0o600))

	dryUn := f.in.Uninstall(ctx, true)
	if AnyFailed(dryUn) {
		t.Fatalf("dry-run uninstall failed: %+v", dryUn)
	}
	un := f.in.Uninstall(ctx, false)
	if AnyFailed(un) {
		t.Fatalf("uninstall failed: %+v", un)
	}
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Errorf("uninstall did not restore the tree (-before +after):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(dir, agentstate.Path)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want the state record gone", err)
	}
	// Uninstalling again is a no-op.
	for _, r := range f.in.Uninstall(ctx, false) {
		if r.Outcome == Failed || r.Outcome == Changed {
			t.Errorf("second uninstall step %s: got %v (%s), want nothing to do", r.Name, r.Outcome, r.Detail)
		}
	}
}

func TestExistingUserIsKeptOnUninstall(t *testing.T) {
	dir := debianRoot(t)
	must(t, exec.Command("groupadd", "--prefix", dir, "--system", "istio-proxy").Run())
	must(t, exec.Command("useradd", "--prefix", dir, "--system", "-g", "istio-proxy", "istio-proxy").Run())
	f := newFixture(t, dir)
	res := f.in.Install(context.Background(), false, nil)
	if o := outcomes(res); o["user"] != Unchanged || o["group"] != Unchanged || o["hosts"] != Skipped {
		t.Errorf("got %+v, want user and group unchanged, hosts skipped", res)
	}
	f.in.Uninstall(context.Background(), false)
	if _, ok, _ := sysusers.New(f.root).LookupUser("istio-proxy"); !ok {
		t.Errorf("uninstall removed a user vmagent did not create")
	}
}

func TestPreflightNamesTheFix(t *testing.T) {
	dir := debianRoot(t)
	f := newFixture(t, dir)
	f.in.opts.LookPath = func(name string) (string, error) {
		if name == "iptables" {
			return "", exec.ErrNotFound
		}
		return exec.LookPath(name)
	}
	res := f.in.Install(context.Background(), false, hosts)
	if res[0].Outcome != Failed || !strings.Contains(res[0].Detail, "apt-get install") {
		t.Fatalf("got %+v, want preflight failed naming the package to install", res[0])
	}
	for _, r := range res[1:] {
		if r.Outcome != Skipped {
			t.Errorf("step %s after a failure: got %v, want skipped", r.Name, r.Outcome)
		}
	}
}

func TestEtcIstioInTheWay(t *testing.T) {
	dir := debianRoot(t)
	must(t, os.MkdirAll(filepath.Join(dir, "etc/istio"), 0o755))
	f := newFixture(t, dir)
	res := f.in.Install(context.Background(), false, hosts)
	for _, r := range res {
		if r.Name == "etc-istio-link" {
			if r.Outcome != Failed || !strings.Contains(r.Detail, "move it away") {
				t.Errorf("got %+v, want a failure that says to move /etc/istio away", r)
			}
			return
		}
	}
	t.Fatal("no etc-istio-link step")
}
