package fleetinstall

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/machine/machinetest"
)

// node is a k3s node as `k3s ctr` sees it, standing in for k3s's
// containerd (the boundary the tests cannot reach): what containerd
// v2.0's `ctr images import` and `images ls -q` do, read from
// containerd's cmd/ctr/commands/images and core/images/archive, and
// k3s's pkg/ctr (its socket and the k8s.io default namespace).
type node struct {
	*machinetest.Provider
	unameM string
	// k3s says whether the k3s binary is there; running whether its
	// containerd answers.
	k3s, running bool

	mu sync.Mutex
	// images are name -> labels, per containerd namespace.
	images  map[string]map[string]map[string]string
	imports int
}

func newNode(name, unameM string) *node {
	n := &node{Provider: machinetest.New(machine.Machine{Name: name, State: machine.Running}), unameM: unameM, k3s: true, running: true,
		images: map[string]map[string]map[string]string{}}
	n.Run = n.run
	return n
}

var (
	ctrPrefix = regexp.MustCompile(`^k3s ctr --namespace (\S+) images (.*)$`)
	importCmd = regexp.MustCompile(`^set -e; trap 'rm -f (\S+)' EXIT; (k3s ctr .*) (\S+)$`)
	importArg = regexp.MustCompile(`^import --platform (\S+) --label (\S+)$`)
	lsArg     = regexp.MustCompile(`^ls -q '?name==([^'\s]+)'?$`)
)

// run answers the scripts hostctl sends, with ctr's output, messages and
// exit status ("ctr: <error>", exit 1; sh's 127 for a missing k3s).
func (n *node) run(script string) ([]byte, error) {
	if script == "uname -m" {
		return []byte(n.unameM + "\n"), nil
	}
	cmd, file := script, ""
	if m := importCmd.FindStringSubmatch(script); m != nil {
		if m[1] != m[3] {
			return nil, fmt.Errorf("the script removes %s but imports %s", m[1], m[3])
		}
		cmd, file = m[2], m[3]
	}
	if !n.k3s {
		return []byte("sh: 1: k3s: not found\n"), errors.New("exit status 127")
	}
	m := ctrPrefix.FindStringSubmatch(cmd)
	if m == nil {
		return []byte("unexpected script " + script), errors.New("exit status 2")
	}
	if !n.running {
		return []byte(`ctr: failed to dial "/run/k3s/containerd/containerd.sock": context deadline exceeded` + "\n"), errors.New("exit status 1")
	}
	ns, args := m[1], m[2]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.images[ns] == nil {
		n.images[ns] = map[string]map[string]string{}
	}
	if l := lsArg.FindStringSubmatch(args); l != nil {
		if _, ok := n.images[ns][l[1]]; ok {
			return []byte(l[1] + "\n"), nil
		}
		return nil, nil
	}
	if a := importArg.FindStringSubmatch(args); a != nil && file != "" {
		n.imports++
		names, err := ctrImport(n.File(file), a[1])
		if err != nil {
			return []byte("ctr: " + err.Error() + "\n"), errors.New("exit status 1")
		}
		k, v, _ := strings.Cut(a[2], "=")
		for _, name := range names {
			n.images[ns][name] = map[string]string{k: v}
		}
		return []byte("saved\nCompleted import\n"), nil
	}
	return []byte("ctr: unexpected arguments " + args), errors.New("exit status 1")
}

// ctrImport is ctr import's reading of a docker archive (the form
// hostctl sends): manifest.json's configs and layers must be in the
// archive, the config's platform must be the one asked for (else
// containerd's walk finds nothing: "image might be filtered out"), the
// layers must unpack, and each RepoTag is normalized as Docker's
// references are. It returns the names stored.
func ctrImport(archive []byte, platform string) ([]string, error) {
	if archive == nil {
		return nil, errors.New("open: no such file or directory")
	}
	blobs := map[string][]byte{}
	var mfsts []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, _ := io.ReadAll(tr)
		if n := path.Clean(h.Name); n == "manifest.json" {
			if err := json.Unmarshal(b, &mfsts); err != nil {
				return nil, fmt.Errorf("untar manifest %q: %w", h.Name, err)
			}
		} else {
			blobs[n] = b
		}
	}
	if mfsts == nil {
		return nil, errors.New("unrecognized image format")
	}
	var names []string
	for _, m := range mfsts {
		cfg, ok := blobs[m.Config]
		if !ok {
			return nil, fmt.Errorf("image config %q not found", m.Config)
		}
		var c struct{ OS, Architecture string }
		if err := json.Unmarshal(cfg, &c); err != nil {
			return nil, err
		}
		for _, l := range m.Layers {
			b, ok := blobs[l]
			if !ok {
				return nil, fmt.Errorf("failed to resolve layers: layer %q not found", l)
			}
			if err := unpack(b); err != nil {
				return nil, fmt.Errorf("failed to extract layer %s: %w", l, err)
			}
		}
		if c.OS+"/"+c.Architecture != platform {
			return nil, errors.New("image might be filtered out")
		}
		for _, t := range m.RepoTags {
			names = append(names, normalize(t))
		}
	}
	return names, nil
}

func unpack(layer []byte) error {
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		if _, err := tr.Next(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// normalize is Docker's reference normalization (containerd's
// normalizeReference): no domain means docker.io (and library/ for one
// path component); no tag means :latest.
func normalize(ref string) string {
	first, _, found := strings.Cut(ref, "/")
	if !found || !strings.ContainsAny(first, ".:") && first != "localhost" {
		if !found {
			ref = "library/" + ref
		}
		ref = "docker.io/" + ref
	}
	if !strings.Contains(ref[strings.LastIndex(ref, "/")+1:], ":") && !strings.Contains(ref, "@") {
		ref += ":latest"
	}
	return ref
}

// byName dispatches the provider's calls to each node by name.
type byName map[string]*node

func (c byName) Launch(ctx context.Context, s machine.Spec) (machine.Machine, error) {
	return c[s.Name].Launch(ctx, s)
}
func (c byName) Info(ctx context.Context, name string) (machine.Machine, error) {
	return c[name].Info(ctx, name)
}
func (c byName) Exec(ctx context.Context, name string, stdin io.Reader, args ...string) ([]byte, error) {
	return c[name].Exec(ctx, name, stdin, args...)
}
func (c byName) Transfer(ctx context.Context, name, p string, data io.Reader, mode os.FileMode) error {
	return c[name].Transfer(ctx, name, p, data, mode)
}
func (c byName) Delete(ctx context.Context, name string) error { return c[name].Delete(ctx, name) }

// The image loaded into the recipe's cluster (an amd64 server, an amd64
// and an arm64 agent): each node's containerd, in the kubelet's namespace,
// holds it under the Deployment's reference, pinned, for its architecture;
// a second load sends nothing; a node without k3s, or whose containerd
// is down, is named with the fix, and a wrong architecture is refused as
// containerd refuses it.
func TestLoadK3sThroughTheMachineProvider(t *testing.T) {
	im, err := Build(staticBinaries(t))
	if err != nil {
		t.Fatal(err)
	}
	c := byName{"k3s-server": newNode("k3s-server", "x86_64"), "k3s-agent-1": newNode("k3s-agent-1", "x86_64"), "k3s-agent-2": newNode("k3s-agent-2", "aarch64")}
	nodes := []string{"k3s-server", "k3s-agent-1", "k3s-agent-2"}
	ctx := context.Background()
	var lines []string
	var mu sync.Mutex
	say := func(f string, a ...any) { mu.Lock(); lines = append(lines, fmt.Sprintf(f, a...)); mu.Unlock() }

	got, err := LoadK3s(ctx, c, nodes, im, say)
	if err != nil {
		t.Fatal(err)
	}
	ref := im.LocalRef()
	for i, n := range nodes {
		want := map[string]string{"k3s-server": "amd64", "k3s-agent-1": "amd64", "k3s-agent-2": "arm64"}[n]
		if got[i] != (Loaded{Node: n, Arch: want, Action: "imported"}) {
			t.Errorf("%s: %+v, want imported for %s", n, got[i], want)
		}
		labels, ok := c[n].images["k8s.io"][ref]
		if !ok {
			t.Errorf("%s: containerd's k8s.io namespace lacks %s: %v", n, ref, c[n].images)
		}
		if labels["io.cri-containerd.pinned"] != "pinned" {
			t.Errorf("%s: labels %v, want the CRI pin", n, labels)
		}
	}
	if len(lines) != 3 || !strings.Contains(strings.Join(lines, "\n"), "k3s-agent-2: image "+ref+" imported (linux/arm64)") {
		t.Errorf("progress lines:\n%s", strings.Join(lines, "\n"))
	}

	again, err := LoadK3s(ctx, c, nodes, im, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if again[i].Action != "unchanged" || c[n].imports != 1 || c[n].Files() != 1 {
			t.Errorf("%s second load: %+v, %d imports, %d files sent; want unchanged with nothing sent", n, again[i], c[n].imports, c[n].Files())
		}
	}

	// A new binary is a new reference, imported beside the old one.
	other, err := Build(map[string][]byte{"amd64": append(bytes.Clone(staticBinaries(t)["amd64"]), 0), "arm64": staticBinaries(t)["arm64"]})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := LoadK3s(ctx, c, nodes[:1], other, nil); err != nil || got[0].Action != "imported" {
		t.Errorf("another build: %+v, %v; want imported", got, err)
	}

	for _, tc := range []struct {
		name   string
		break_ func(*node)
		want   string
	}{
		{"no k3s", func(n *node) { n.k3s = false }, "k3s is not installed on this machine"},
		{"containerd down", func(n *node) { n.running = false }, "is k3s running?"},
	} {
		n := newNode("k3s-agent-9", "x86_64")
		tc.break_(n)
		_, err := LoadK3s(ctx, byName{"k3s-agent-9": n}, []string{"k3s-agent-9"}, im, nil)
		if err == nil || !strings.Contains(err.Error(), "k3s node k3s-agent-9") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want the node named and %q", tc.name, err, tc.want)
		}
	}

	// containerd's own check: an archive for another platform is refused.
	tb, _ := im.Tarball("arm64")
	if _, err := ctrImport(tb, "linux/amd64"); err == nil || err.Error() != "image might be filtered out" {
		t.Errorf("stand-in: arm64 archive for linux/amd64: %v", err)
	}
	if _, err := ctrImport([]byte("not a tar"), "linux/amd64"); err == nil {
		t.Error("stand-in: garbage imported")
	}
	if normalize("alpine") != "docker.io/library/alpine:latest" || normalize(ref) != ref || normalize("localhost:5000/a/b") != "localhost:5000/a/b:latest" {
		t.Errorf("stand-in normalization: %s %s %s", normalize("alpine"), normalize(ref), normalize("localhost:5000/a/b"))
	}
	if _, err := LoadK3s(ctx, c, nil, im, nil); err == nil {
		t.Error("no nodes: no error")
	}
}
