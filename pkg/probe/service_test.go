package probe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestServiceRefusesWhatIsNotAServiceName(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "example.com.", "http://helloworld.sample", "helloworld", "a.b.c", "helloworld.sample.svc.cluster", "HelloWorld.sample"} {
		r := Service(context.Background(), host, 5000, "/", 0)
		if !errors.Is(r.Err, ErrNotService) {
			t.Errorf("%q: got %v, want ErrNotService", host, r.Err)
		}
	}
	if r := Service(context.Background(), "helloworld.sample", 0, "/", 0); !errors.Is(r.Err, ErrBadPort) {
		t.Errorf("port 0: %v", r.Err)
	}
	if r := Service(context.Background(), "helloworld.sample", 5000, "http://x/", 0); r.Err == nil || !strings.Contains(r.Err.Error(), "not a URL") {
		t.Errorf("URL path: %v", r.Err)
	}
}

// TestServiceByName calls a service by its Kubernetes name through the
// machine's resolver, as the agent does on a VM: a child process in its own
// mount namespace sees an /etc/hosts naming helloworld.sample.
func TestServiceByName(t *testing.T) {
	if port := os.Getenv("PROBE_SERVICE_PORT"); port != "" {
		p, _ := strconv.Atoi(port)
		r := Service(context.Background(), "helloworld.sample", p, "/hello", 0)
		fmt.Printf("status=%d ok=%v err=%v body=%s\n", r.StatusCode, r.OK, r.Err, r.Body)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind-mount /etc/hosts in a mount namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello version: v1, path %s, host %s", r.URL.Path, r.Host)
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n127.0.0.1 helloworld.sample\n"), 0o644)
	self, _ := os.Executable()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /etc/hosts && exec "$2" -test.run '^TestServiceByName$'`, "sh", hosts, self)
	cmd.Env = append(os.Environ(), "PROBE_SERVICE_PORT="+port)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "status=200 ok=true err=<nil> body=Hello version: v1, path /hello, host helloworld.sample:"+port) {
		t.Errorf("got %s", out)
	}
}
