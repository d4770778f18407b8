package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/lab/procs"
)

// TestControlPlane runs etcd, the API server and the controller manager for
// real and checks what the lab relies on: TokenRequest with audience
// istio-ca, and namespace deletion (controller manager). Up twice keeps the
// running processes; Down leaves none.
func TestControlPlane(t *testing.T) {
	labtest.RequireBuild(t)
	cache := labtest.Cache()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	bins, err := build.Build(ctx, build.Options{ModuleDir: labtest.ModuleDir, CacheDir: cache, Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := Config{Dir: dir, APIServer: bins.Path("kube-apiserver"), ControllerManager: bins.Path("kube-controller-manager"), Progress: os.Stderr}
	t.Cleanup(func() {
		if err := Down(context.Background(), dir); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	if err := Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, c := range components {
		pid, ok := procs.Dir(dir).Running(c.name)
		if !ok {
			t.Fatalf("%s not running after Up", c.name)
		}
		pids[c.name] = pid
	}
	hc, err := AdminHTTPClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, path, body string, want int) map[string]any {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, Server(dir)+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: got %d %s, want %d", method, path, resp.StatusCode, data, want)
		}
		out := map[string]any{}
		json.Unmarshal(data, &out)
		return out
	}
	call("POST", "/api/v1/namespaces", `{"metadata":{"name":"vmns"}}`, 201)
	call("POST", "/api/v1/namespaces/vmns/serviceaccounts", `{"metadata":{"name":"vmsa"}}`, 201)
	tr := call("POST", "/api/v1/namespaces/vmns/serviceaccounts/vmsa/token",
		`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["istio-ca"],"expirationSeconds":3600}}`, 201)
	if tok, _ := tr["status"].(map[string]any)["token"].(string); strings.Count(tok, ".") != 2 {
		t.Errorf("TokenRequest returned %v, want a JWT", tr["status"])
	}
	call("DELETE", "/api/v1/namespaces/vmns", "", 200)
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", Server(dir)+"/api/v1/namespaces/vmns", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 404 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("namespace vmns never went away: is the controller manager's namespace controller running?")
		}
		time.Sleep(500 * time.Millisecond)
	}

	var progress bytes.Buffer
	cfg.Progress = &progress
	if err := Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for name, pid := range pids {
		if now, _ := procs.Dir(dir).Running(name); now != pid {
			t.Errorf("%s: second Up replaced pid %d with %d", name, pid, now)
		}
	}
	if got := strings.Count(progress.String(), "already running"); got != len(components) {
		t.Errorf("second Up said:\n%s\nwant every component already running", progress.String())
	}
	if err := Down(ctx, dir); err != nil {
		t.Fatal(err)
	}
	for name, pid := range pids {
		if procs.Alive(pid) {
			t.Errorf("%s (pid %d) still alive after Down", name, pid)
		}
	}
}
