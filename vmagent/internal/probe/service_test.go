package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
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

// TestServiceByName calls services by their Kubernetes names through the
// machine's resolver, as the agent does on a VM: a child process in its own
// mount and network namespaces sees an /etc/hosts naming them, and a
// non-loopback address (10.213.250.1) on its loopback interface where the
// service listens. Names that /etc/hosts maps to loopback or link-local
// addresses are refused before any connection.
func TestServiceByName(t *testing.T) {
	if os.Getenv("PROBE_SERVICE_CHILD") != "" {
		serviceChild()
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for mount and network namespaces")
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"+
		"10.213.250.1 helloworld.sample.svc.cluster.local\n"+
		"127.0.0.1 loop.sample.svc.cluster.local\n"+
		"::1 loop6.sample.svc.cluster.local\n"+
		"169.254.169.254 metadata.sample.svc.cluster.local\n"+
		"100.100.100.200 alibaba.sample.svc.cluster.local\n"+
		"100.70.0.1 shared.sample.svc.cluster.local\n"+
		"10.213.250.2 self.sample.svc.cluster.local\n"+
		"10.213.250.1 example.com\n"), 0o644)
	self, _ := os.Executable()
	cmd := exec.Command("unshare", "--mount", "--net", "--propagation", "private", "sh", "-c",
		`ip link set lo up && ip addr add 10.213.250.1/32 dev lo && ip addr add 10.213.250.2/32 dev lo && mount --bind "$1" /etc/hosts && exec "$2" -test.run '^TestServiceByName$' -test.v`, "sh", hosts, self)
	cmd.Env = append(os.Environ(), "PROBE_SERVICE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"helloworld.sample: status=200 ok=true err=<nil> body=Hello, path /hello, host helloworld.sample:",
		"helloworld.sample.svc.cluster.local: status=200 ok=true",
		"loop.sample: refused=true err=only Kubernetes service names are called: loop.sample resolves to 127.0.0.1, a loopback address",
		"loop6.sample: refused=true",
		"metadata.sample: refused=true err=only Kubernetes service names are called: metadata.sample resolves to 169.254.169.254, a link-local address",
		"alibaba.sample: refused=true err=only Kubernetes service names are called: alibaba.sample resolves to 100.100.100.200, a cloud metadata address",
		"shared.sample: refused=true err=only Kubernetes service names are called: shared.sample resolves to 100.70.0.1, in the shared range 100.64.0.0/10",
		"self.sample: refused=true err=only Kubernetes service names are called: self.sample resolves to 10.213.250.2, this VM's own address",
		// Looked up as service "example" of namespace "com", never as the host.
		"example.com: status=0 ok=false err=resolve example.com.svc.cluster.local.:",
		"10.213.250.1: refused=true",
		"pinned.sample: status=200 ok=true lookups=1",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

// serviceChild runs inside the namespaces TestServiceByName made.
func serviceChild() {
	l, err := net.Listen("tcp", "10.213.250.1:0")
	if err != nil {
		fmt.Println("listen:", err)
		return
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello, path %s, host %s", r.URL.Path, r.Host)
	})}
	go srv.Serve(l)
	defer srv.Close()
	// Loopback listeners on the same port: a refused name must not reach them.
	port := l.Addr().(*net.TCPAddr).Port
	for _, a := range []string{"127.0.0.1", "[::1]"} {
		if ll, err := net.Listen("tcp", a+":"+strconv.Itoa(port)); err == nil {
			go srv.Serve(ll)
		}
	}
	// 10.213.250.1 stands for a pod elsewhere: only 10.213.250.2 is this
	// machine's as far as the check goes.
	realOwn := ownAddrs
	ownAddrs = func() []netip.Addr {
		var own []netip.Addr
		for _, a := range realOwn() {
			if a != netip.MustParseAddr("10.213.250.1") {
				own = append(own, a)
			}
		}
		return own
	}
	for _, host := range []string{"helloworld.sample", "helloworld.sample.svc.cluster.local", "loop.sample", "loop6.sample", "metadata.sample", "alibaba.sample", "shared.sample", "self.sample", "example.com", "10.213.250.1"} {
		r := Service(context.Background(), host, port, "/hello", 0)
		if errors.Is(r.Err, ErrNotService) {
			fmt.Printf("%s: refused=true err=%v\n", host, r.Err)
			continue
		}
		fmt.Printf("%s: status=%d ok=%v err=%v body=%s\n", host, r.StatusCode, r.OK, r.Err, r.Body)
	}
	// The name is resolved once and the connection goes to that address: a
	// name only the lookup knows (the system resolver cannot) still works.
	calls := 0
	realLookup := lookup
	lookup = func(ctx context.Context, fqdn string) ([]netip.Addr, error) {
		calls++
		if fqdn == "pinned.sample.svc.cluster.local." {
			return []netip.Addr{netip.MustParseAddr("10.213.250.1")}, nil
		}
		return realLookup(ctx, fqdn)
	}
	defer func() { lookup = realLookup }()
	r := Service(context.Background(), "pinned.sample", port, "/", 0)
	fmt.Printf("pinned.sample: status=%d ok=%v lookups=%d err=%v\n", r.StatusCode, r.OK, calls, r.Err)
}
