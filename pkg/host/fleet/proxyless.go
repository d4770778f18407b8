package fleet

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/mtlsprobe"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// VerifyOptions are what verify checks beyond the recipe's closing checks.
type VerifyOptions struct {
	// GRPCService is NAME.NAMESPACE:PORT, the mesh gRPC service that
	// proxyless VMs call by its mesh name (xds:///) as their traffic check.
	GRPCService string
}

// GRPCCaller is a site that can run a gRPC xDS client on a proxyless VM
// (the lab: Istio's echo client, built from the pinned module). On other
// sites the VM's own app is the only client.
type GRPCCaller interface {
	CallGRPC(ctx context.Context, vm, target string) (string, error)
}

// proxylessChecks are verify's traffic checks of a proxyless VM: the
// recipe's curls need Envoy, so instead its own port must take mesh
// clients only (mTLS shown from outside), and it calls the named gRPC
// service through pilot-agent's xDS where the site can run a client.
func (f *Fleet) proxylessChecks(ctx context.Context, vm config.VM, m machine.Machine, o VerifyOptions) []Verdict {
	cfg := f.Config
	clients, err := KubeClients(f.Site.Kubeconfig())
	if err != nil {
		return []Verdict{{VM: vm.Name, Check: "proxyless gRPC", Result: Fail, Detail: err.Error()}}
	}
	spec := WorkloadSpec(cfg)
	e, found, err := workload.FindEntry(ctx, clients, spec, entryAddress(f.State, m))
	if err != nil {
		return []Verdict{{VM: vm.Name, Check: "proxyless gRPC", Result: Fail, Detail: err.Error()}}
	}
	// pilot-agent connects to istiod only while an app holds its xDS
	// connection, and it holds one at a time (istio/istio#53532).
	appConnected := found && e.ConnectedAt != ""
	port := net.JoinHostPort(m.Address(), strconv.Itoa(cfg.Workload.Port))
	served := Verdict{VM: vm.Name, Check: "mTLS on " + port + " (proxyless gRPC)", Result: Skipped,
		Detail: "not checked: no app is connected to pilot-agent, so nothing serves the workload port through xDS"}
	if appConnected {
		served = serverMTLS(ctx, clients, vm.Name, port, spec.Namespace, spec.ServiceAccount)
	}
	out := []Verdict{served, f.meshCall(ctx, clients, vm, appConnected, o)}
	return out
}

// serverMTLS probes the VM's workload port from here.
func serverMTLS(ctx context.Context, clients workload.Clients, vm, addr, ns, sa string) Verdict {
	v := Verdict{VM: vm, Check: "mTLS on " + addr + " (proxyless gRPC)", Result: Fail}
	roots, err := meshRoots(ctx, clients, ns)
	if err != nil {
		v.Detail = err.Error()
		return v
	}
	r := mtlsprobe.Probe(ctx, addr, roots, 5*time.Second)
	if err := r.Enforced("/ns/" + ns + "/sa/" + sa); err != nil {
		v.Detail = err.Error()
		return v
	}
	v.Result, v.Detail = OK, fmt.Sprintf("plaintext and clients without a certificate refused; presents %s, chained to the mesh's root", strings.Join(r.URIs, ","))
	return v
}

// meshRoots is the mesh's root certificate as istiod publishes it in ns.
func meshRoots(ctx context.Context, clients workload.Clients, ns string) (*x509.CertPool, error) {
	cm, err := clients.Kube.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("the mesh's root (ConfigMap %s/istio-ca-root-cert): %w", ns, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cm.Data["root-cert.pem"])) {
		return nil, fmt.Errorf("ConfigMap %s/istio-ca-root-cert holds no certificate", ns)
	}
	return roots, nil
}

// MeshCallCheck names verify's VM-to-VM check.
const MeshCallCheck = "VM↔VM mTLS via proxyless gRPC"

// meshCall has the VM call o.GRPCService through pilot-agent's xDS, and
// shows the call was mTLS: every endpoint of the service refuses plaintext
// and clients without a certificate (where grpc-go would otherwise fall
// back to plaintext silently).
func (f *Fleet) meshCall(ctx context.Context, clients workload.Clients, vm config.VM, appConnected bool, o VerifyOptions) Verdict {
	v := Verdict{VM: vm.Name, Check: MeshCallCheck, Result: Skipped}
	caller, ok := f.Site.(GRPCCaller)
	switch {
	case o.GRPCService == "":
		v.Detail = "not checked: name the mesh gRPC service to call with --grpc-service NAME.NAMESPACE:PORT"
		return v
	case !ok:
		v.Detail = "not checked: meshvm runs no gRPC client on your VMs; your app's calls are the check"
		return v
	case appConnected:
		v.Detail = "not checked: the VM's app holds pilot-agent's only xDS connection (istio/istio#53532): a second gRPC client would cut it off"
		return v
	}
	name, ns, port, err := serviceRef(o.GRPCService)
	if err != nil {
		v.Result, v.Detail = Fail, err.Error()
		return v
	}
	target := fmt.Sprintf("xds:///%s.%s.svc.cluster.local:%d", name, ns, port)
	v.Result = Fail
	out, err := caller.CallGRPC(ctx, vm.Name, target)
	if err != nil {
		v.Detail = fmt.Sprintf("%s: %v: %s", target, err, lastLine(out))
		return v
	}
	eps, err := endpoints(ctx, clients, name, ns, port)
	if err != nil {
		v.Detail = fmt.Sprintf("%s answered, but its endpoints could not be checked for mTLS: %v", target, err)
		return v
	}
	for _, ep := range eps {
		r := serverMTLS(ctx, clients, vm.Name, ep.addr, ns, ep.serviceAccount)
		if r.Result != OK {
			v.Detail = fmt.Sprintf("%s answered, but endpoint %s is not mTLS-only, so the call may have been plaintext: %s", target, ep.addr, r.Detail)
			return v
		}
	}
	v.Result = OK
	v.Detail = fmt.Sprintf("%s answered (%s); its %d endpoint(s) take mesh clients only, so the call was mTLS", target, firstAnswer(out), len(eps))
	return v
}

// serviceRef parses NAME.NAMESPACE:PORT.
func serviceRef(s string) (name, ns string, port int, err error) {
	host, p, err := net.SplitHostPort(s)
	name, ns, dotted := strings.Cut(host, ".")
	port, perr := strconv.Atoi(p)
	if err != nil || !dotted || name == "" || ns == "" || strings.Contains(ns, ".") || perr != nil || port < 1 || port > 65535 {
		return "", "", 0, fmt.Errorf("--grpc-service %q: want NAME.NAMESPACE:PORT, e.g. grpc-server.vmns:7070", s)
	}
	return name, ns, port, nil
}

type endpoint struct{ addr, serviceAccount string }

// endpoints are the service's WorkloadEntries (how VMs back a Service) at
// its target port.
func endpoints(ctx context.Context, c workload.Clients, name, ns string, port int) ([]endpoint, error) {
	svc, err := c.Kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	target := port
	for _, p := range svc.Spec.Ports {
		if int(p.Port) == port && p.TargetPort.IntValue() > 0 {
			target = p.TargetPort.IntValue()
		}
	}
	list, err := c.Istio.NetworkingV1().WorkloadEntries(ns).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String()})
	if err != nil {
		return nil, err
	}
	var out []endpoint
	for _, we := range list.Items {
		out = append(out, endpoint{net.JoinHostPort(we.Spec.Address, strconv.Itoa(target)), we.Spec.ServiceAccount})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no WorkloadEntry is selected by Service %s/%s", ns, name)
	}
	return out, nil
}

// firstAnswer is the echo's Hostname line, else the first line.
func firstAnswer(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "Hostname="); i >= 0 {
			return l[i:]
		}
	}
	return firstLine(out)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
