package istioinstall

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// A render kept by RenderIn reads back as the same objects (integers as
// int64, as Render gives them), is found again for the same options, and
// other options render anew and replace it.
func TestRenderInKeepsTheRender(t *testing.T) {
	dir := t.TempDir()
	o := Options{MeshID: "mesh1", ClusterName: "cluster1", Network: "network1"}
	want, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	first, err := RenderIn(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := filepath.Glob(filepath.Join(dir, "render-*.json"))
	if len(kept) != 1 {
		t.Fatalf("renders kept: %v, want one", kept)
	}
	// Read back, not rendered: a render whose file says otherwise shows it.
	again, err := RenderIn(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range [][]Object{first, again} {
		if len(got) != len(want) {
			t.Fatalf("%d objects, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].Component != want[i].Component || !reflect.DeepEqual(got[i].Object, want[i].Object) {
				t.Fatalf("object %d (%s): kept render differs from Render's", i, want[i].Ref())
			}
		}
	}
	if err := os.WriteFile(kept[0], []byte(`[{"component":"x","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"from-the-file"}}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := RenderIn(dir, o); len(got) != 1 || got[0].GetName() != "from-the-file" {
		t.Fatalf("got %d objects, want the kept render read back instead of rendering", len(got))
	}
	if _, err := RenderIn(dir, Options{MeshID: "mesh1", ClusterName: "cluster1", Network: "network1", Revision: "canary"}); err != nil {
		t.Fatal(err)
	}
	if now, _ := filepath.Glob(filepath.Join(dir, "render-*.json")); len(now) != 1 || now[0] == kept[0] {
		t.Errorf("renders kept after other options: %v, want only the new one", now)
	}
	if _, ok := renderKey(Options{Istioctl: "/usr/local/bin/istioctl"}); ok {
		t.Error("a render through an istioctl was keyed, want it never kept")
	}
}
