package build

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestVersionsFromPins(t *testing.T) {
	gomod, err := os.ReadFile("../toolchain/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	v, err := versions(gomod)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v.Kubernetes, "v1.") || !strings.Contains(v.Istio, "-") {
		t.Errorf("got %+v, want a Kubernetes release and an Istio pseudo-version", v)
	}
	got := strings.Join(k8sFlags(Versions{Kubernetes: "v1.36.3"}), " ")
	for _, want := range []string{"k8s.io/component-base/version.gitVersion=v1.36.3", "gitMajor=1", "gitMinor=36", "k8s.io/client-go/pkg/version.gitTreeState=clean"} {
		if !strings.Contains(got, want) {
			t.Errorf("ldflags %q lack %q", got, want)
		}
	}
	if _, err := versions([]byte("module x\n")); err == nil {
		t.Error("got no error for a go.mod without the pins")
	}
}

// TestBuildControlPlane builds the real binaries (about 25 minutes cold on
// two cores, seconds when cached) and runs each one's version command.
func TestBuildControlPlane(t *testing.T) {
	if os.Getenv("MESHVM_LAB_BUILD") == "" {
		t.Skip("set MESHVM_LAB_BUILD=1 to build the lab control plane from source")
	}
	cache := DefaultCacheDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	var progress bytes.Buffer
	res, err := Build(ctx, Options{ModuleDir: "../toolchain", CacheDir: cache, Progress: &progress})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][]string{
		"kube-apiserver":          {"--version"},
		"kube-controller-manager": {"--version"},
		"pilot-discovery":         {"version", "--short"},
		"pilot-agent":             {"version", "--short"},
		"istioctl":                {"version", "--remote=false", "--short"},
	}
	// lab-envoy refuses to run without a bootstrap, naming what it needs.
	if out, err := exec.Command(res.Path("lab-envoy")).CombinedOutput(); err == nil || !strings.Contains(string(out), "-c <envoy-rev.json>") {
		t.Errorf("lab-envoy without -c: got %v, %q", err, out)
	}
	// Istio's echo apps serve and call gRPC through xDS (the proxyless VMs' apps).
	for name, flag := range map[string]string{"echo-server": "--xds-grpc-server", "echo-client": "--client-cert"} {
		if out, err := exec.Command(res.Path(name), "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), flag) {
			t.Errorf("%s --help: %v, want %s in:\n%s", name, err, flag, out)
		}
	}
	for name, args := range checks {
		out, err := exec.Command(res.Path(name), args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v\n%s", name, args, err, out)
			continue
		}
		want := res.Versions.Istio
		if strings.HasPrefix(name, "kube-") {
			want = res.Versions.Kubernetes
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("%s reports %q, want %s", name, strings.TrimSpace(string(out)), want)
		}
	}
	again, err := Build(ctx, Options{ModuleDir: "../toolchain", CacheDir: cache})
	if err != nil || !again.Cached || again.Dir != res.Dir {
		t.Errorf("second build: got %+v, %v, want the cached set", again, err)
	}
}

// The Envoy stand-in is meshvm's own source: a cached control plane keeps
// its binaries, and the stand-in alone is rebuilt when its source changes.
func TestOwnComponentFollowsItsSource(t *testing.T) {
	mod := t.TempDir()
	os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module "+ownModule+"\n\ngo 1.22\n"), 0o644)
	os.Mkdir(filepath.Join(mod, "labenvoy"), 0o755)
	src := filepath.Join(mod, "labenvoy", "main.go")
	os.WriteFile(src, []byte("package main\n\nfunc main() { println(1) }\n"), 0o644)
	bin := t.TempDir()
	o := Options{ModuleDir: mod, Arch: runtime.GOARCH, Progress: io.Discard}
	for i, want := range []bool{true, false} {
		if rebuilt, err := refreshOwn(context.Background(), o, Versions{}, bin); err != nil || rebuilt != want {
			t.Fatalf("refresh %d: rebuilt %v (%v), want %v", i, rebuilt, err, want)
		}
	}
	before, _ := os.ReadFile(filepath.Join(bin, "lab-envoy"))
	os.WriteFile(src, []byte("package main\n\nfunc main() { println(2) }\n"), 0o644)
	if rebuilt, err := refreshOwn(context.Background(), o, Versions{}, bin); err != nil || !rebuilt {
		t.Fatalf("after a source change: rebuilt %v (%v), want a rebuild", rebuilt, err)
	}
	if after, _ := os.ReadFile(filepath.Join(bin, "lab-envoy")); bytes.Equal(before, after) {
		t.Error("the binary did not change with its source")
	}
}

func TestCachedNamesMakeLabWhenNotBuilt(t *testing.T) {
	o := Options{ModuleDir: "../toolchain", CacheDir: t.TempDir()}
	_, err := Cached(context.Background(), o)
	if !errors.Is(err, ErrNotBuilt) || !strings.Contains(err.Error(), "make lab") {
		t.Fatalf("got %v, want ErrNotBuilt naming make lab", err)
	}
	// Where Build would put them, once complete, is what Cached returns.
	_, res, _, err := locate(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(res.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(res.Dir, ".complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Cached(context.Background(), o)
	if err != nil || got.Dir != res.Dir {
		t.Fatalf("got %+v, %v, want %s", got, err, res.Dir)
	}
}

// TestKeyIsThePinsNotThePath: the toolchain module moved (and may again)
// without its pins changing; the cache must not go cold for it. A changed
// pin must change the key.
func TestKeyIsThePinsNotThePath(t *testing.T) {
	gomod, err := os.ReadFile("../toolchain/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	gosum, err := os.ReadFile("../toolchain/go.sum")
	if err != nil {
		t.Fatal(err)
	}
	key := func(mod []byte) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), mod, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "go.sum"), gosum, 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, k, err := locate(context.Background(), Options{ModuleDir: dir, CacheDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	here := key(gomod)
	moved := key(bytes.Replace(gomod, []byte("module github.com/meshvm/meshvm/lab/toolchain"), []byte("module example.com/elsewhere/pins"), 1))
	if here != moved {
		t.Errorf("key %s became %s when only the module's path changed", here, moved)
	}
	if !bytes.Contains(gomod, []byte("k8s.io/kubernetes v1.")) {
		t.Fatal("the pins no longer name k8s.io/kubernetes; update this test")
	}
	bumped := key(bytes.Replace(gomod, []byte("k8s.io/kubernetes v1."), []byte("k8s.io/kubernetes v9."), 1))
	if bumped == here {
		t.Error("key unchanged after a pin changed")
	}
}

// Two labs coming up at once build the control plane once: the second
// waits, saying so, until the first is done.
func TestBuildLockMakesTheSecondWait(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bin-key")
	unlock, err := lockBuild(dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var said syncBuffer
	got := make(chan error, 1)
	go func() {
		unlock2, err := lockBuild(dir, &said)
		if err == nil {
			unlock2()
		}
		got <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(said.String(), "another process is building the lab's control plane into "+dir) {
		if time.Now().After(deadline) {
			t.Fatalf("the second lock neither waited nor said so: %q", said.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-got:
		t.Fatalf("the second lock was taken while the first was held (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second lock was not taken after the first was released")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
