package fleetinstall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/reason"
)

// PinnedLabel is containerd's CRI label that keeps an image from the
// kubelet's image garbage collection: an image loaded by hand cannot be
// pulled again, so it must not be collected while no pod uses it.
const PinnedLabel = "io.cri-containerd.pinned=pinned"

// Loaded is what loading did on one node: "imported", or "unchanged" when
// its containerd already held the image.
type Loaded struct {
	Node   string           `json:"node"`
	Arch   string           `json:"arch"`
	Action ownership.Action `json:"action"` // imported or unchanged
}

// LoadK3s imports the image into the containerd of every node (k3s's,
// through `k3s ctr`, in the namespace the kubelet uses) through the
// machine provider, each node getting its architecture's image; a node
// that already holds the image's reference is left alone. The nodes are
// worked on concurrently, a few at a time; one failing names it.
func LoadK3s(ctx context.Context, p machine.Provider, nodes []string, im Image, say func(format string, args ...any)) ([]Loaded, error) {
	if say == nil {
		say = func(string, ...any) {}
	}
	if len(nodes) == 0 {
		return nil, errNoNodes
	}
	ref := im.LocalRef()
	tars := &tarballs{im: im, byArch: map[string][]byte{}}
	out := make([]Loaded, len(nodes))
	var g errgroup.Group
	g.SetLimit(4) // each holds one tarball transfer in flight
	for i, node := range nodes {
		g.Go(func() error {
			l, err := loadNode(ctx, p, node, ref, tars)
			if err != nil {
				return fmt.Errorf("k3s node %s: %w", node, err)
			}
			say("%s: image %s %s (linux/%s)", node, ref, l.Action, l.Arch)
			out[i] = l
			return nil
		})
	}
	return out, g.Wait()
}

// tarballs makes each architecture's archive once, however many nodes ask.
type tarballs struct {
	im     Image
	mu     sync.Mutex
	byArch map[string][]byte
}

func (t *tarballs) get(arch string) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if b, ok := t.byArch[arch]; ok {
		return b, nil
	}
	b, err := t.im.Tarball(arch)
	if err == nil {
		t.byArch[arch] = b
	}
	return b, err
}

// ctr is k3s's containerd client: its socket is k3s's, and k3s defaults
// its namespace to k8s.io; it is named anyway, since CONTAINERD_NAMESPACE
// in the environment would override that default.
const ctr = "k3s ctr --namespace k8s.io"

func loadNode(ctx context.Context, p machine.Provider, node, ref string, tars *tarballs) (Loaded, error) {
	out, err := p.Exec(ctx, node, nil, "sh", "-c", "uname -m")
	if err != nil {
		return Loaded{}, fmt.Errorf("uname -m: %w: %s", err, lastLine(out))
	}
	arch := machine.GoArch(strings.TrimSpace(string(out)))
	l := Loaded{Node: node, Arch: arch}
	have, err := holds(ctx, p, node, ref)
	if err != nil {
		return l, err
	}
	if have {
		l.Action = ownership.Unchanged
		return l, nil
	}
	tar, err := tars.get(arch)
	if err != nil {
		return l, err
	}
	// A root-only file, removed whatever the import does: transfer, then
	// import by path (ctr reads the whole archive before it stores anything).
	path := "/var/tmp/meshvm-controller-" + strings.TrimPrefix(ref[strings.LastIndex(ref, ":")+1:], "sha-") + ".tar"
	if err := p.Transfer(ctx, node, path, bytes.NewReader(tar), 0o600); err != nil {
		return l, fmt.Errorf("send the image (%d bytes) to %s: %w", len(tar), path, err)
	}
	if out, err := p.Exec(ctx, node, nil, "sh", "-c", ImportScript(path, arch)); err != nil {
		hint, r := ctrHint(out)
		return l, reason.Wrap(fmt.Errorf("k3s ctr images import: %w: %s%s", err, lastLine(out), hint), r)
	}
	// ctr's progress output is for terminals: ask containerd instead.
	if have, err = holds(ctx, p, node, ref); err != nil {
		return l, err
	} else if !have {
		return l, reason.Wrap(fmt.Errorf("k3s ctr images import succeeded but containerd does not list %s", ref), reason.ImageNotListed)
	}
	l.Action = ownership.Imported
	return l, nil
}

// ImportScript imports the archive at path for linux/arch, pinned, and
// removes the file whatever happens.
func ImportScript(path, arch string) string {
	f := machine.ShellQuote(path)
	return "set -e; trap 'rm -f " + f + "' EXIT; " + ctr + " images import --platform linux/" + arch + " --label " + PinnedLabel + " " + f
}

// ListScript prints ref when containerd holds it (ctr's filter syntax).
func ListScript(ref string) string { return ctr + " images ls -q " + machine.ShellQuote("name=="+ref) }

func holds(ctx context.Context, p machine.Provider, node, ref string) (bool, error) {
	out, err := p.Exec(ctx, node, nil, "sh", "-c", ListScript(ref))
	if err != nil {
		hint, r := ctrHint(out)
		return false, reason.Wrap(fmt.Errorf("k3s ctr images ls: %w: %s%s", err, lastLine(out), hint), r)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == ref {
			return true, nil
		}
	}
	return false, nil
}

// ctrHint names the cause of what k3s ctr says when k3s is not there or
// its containerd does not answer, and the reason when the fix is hostctl's.
func ctrHint(out []byte) (string, reason.Reason) {
	s := string(out)
	switch {
	case strings.Contains(s, "k3s: not found") || strings.Contains(s, "k3s: command not found"):
		return " (k3s is not installed on this machine; fleet install loads images only into k3s)", reason.K3sMissing
	case strings.Contains(s, "containerd.sock"):
		return " (k3s's containerd does not answer: is k3s running? systemctl status k3s k3s-agent on the node)", reason.None
	case strings.Contains(s, "image might be filtered out"):
		return " (the image's architecture is not the node's)", reason.None
	}
	return "", reason.None
}

var errNoNodes = errors.New("no k3s nodes to load the controller image into")

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
