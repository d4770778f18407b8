package istioinstall

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/lab/labtest"
)

// TestAnotherVersionThroughIstioctl renders with a real istioctl built from
// the pinned module but stamped as another version (no other can be
// downloaded here): it is found on PATH only when its version is the one
// asked for, and renders the same objects as the embedded charts, with
// that version's images.
func TestAnotherVersionThroughIstioctl(t *testing.T) {
	labtest.RequireBuild(t)
	const other = "1.30.9"
	bin := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X istio.io/istio/pkg/version.buildVersion="+other,
		"-o", filepath.Join(bin, "istioctl"), "istio.io/istio/istioctl/cmd/istioctl")
	build.Dir, build.Env = labtest.ModuleDir, append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build istioctl: %v\n%s", err, out)
	}
	ctx := context.Background()
	t.Setenv("PATH", t.TempDir())
	if _, err := FindIstioctl(ctx, other); err == nil || !strings.Contains(err.Error(), "there is none") {
		t.Errorf("no istioctl on PATH: got %v", err)
	}
	t.Setenv("PATH", bin)
	if _, err := FindIstioctl(ctx, "1.29.0"); err == nil || !strings.Contains(err.Error(), "is "+other) || !strings.Contains(err.Error(), "set istio.version "+other) {
		t.Errorf("istioctl of another version: got %v", err)
	}
	path, err := FindIstioctl(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{MeshID: "mesh1", ClusterName: "test", Network: "net1"}
	embedded, err := Render(opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Tag, opts.Istioctl = other, path
	viaIstioctl, err := Render(opts)
	if err != nil {
		t.Fatal(err)
	}
	refs := func(objs []Object) []string {
		var out []string
		for _, o := range objs {
			out = append(out, o.Ref())
		}
		slices.Sort(out)
		return out
	}
	if a, b := refs(embedded), refs(viaIstioctl); !slices.Equal(a, b) {
		t.Errorf("istioctl rendered other objects:\nembedded %v\nistioctl %v", a, b)
	}
	d, ok := find(viaIstioctl, "Deployment", "istiod")
	if !ok {
		t.Fatal("no istiod Deployment")
	}
	if got := images(d); len(got) != 1 || !strings.HasSuffix(got[0], "/pilot:"+other) {
		t.Errorf("istiod images %v, want tag %s", got, other)
	}
}
