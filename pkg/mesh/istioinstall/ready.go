package istioinstall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/reason"
)

// EastWestPorts are the ports the east-west gateway's LoadBalancer needs.
var EastWestPorts = map[int32]string{15021: "status", 15443: "cross-network", 15012: "istiod", 15017: "webhook"}

// PortConflicts names the other LoadBalancer Services holding a port the
// east-west gateway needs. On k3s, klipper binds a LoadBalancer's ports on
// the nodes, so one of them (typically the default ingress gateway of an
// earlier install) leaves the east-west gateway pending for ever.
func PortConflicts(ctx context.Context, kc kubernetes.Interface) ([]string, error) {
	svcs, err := kc.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var held []string
	for _, s := range svcs.Items {
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer || (s.Namespace == Namespace && s.Name == EastWestGateway) {
			continue
		}
		for _, p := range s.Spec.Ports {
			if what, ok := EastWestPorts[p.Port]; ok {
				held = append(held, fmt.Sprintf("%s/%s holds %d (%s)", s.Namespace, s.Name, p.Port, what))
			}
		}
	}
	return held, nil
}

// PortConflictFix is what to do about PortConflicts.
const PortConflictFix = "delete that LoadBalancer Service (hostctl installs Istio without the default ingress gateway), " +
	"e.g. kubectl -n istio-system delete svc istio-ingressgateway"

// ErrPortConflict is returned by WaitReady when another LoadBalancer holds
// the east-west gateway's ports.
var ErrPortConflict = errors.New("the east-west gateway's LoadBalancer is pending while another LoadBalancer holds its ports")

// readyDeployments must be available before VMs can onboard: the
// revision's istiod and the east-west gateway.
func readyDeployments(rev string, gateway bool) []string {
	if !gateway {
		return []string{IstiodService(rev)}
	}
	return []string{IstiodService(rev), EastWestGateway}
}

// EastWestAddress is the east-west gateway's LoadBalancer address (IP, else
// host name): where VMs reach istiod. Empty while it is pending.
func EastWestAddress(ctx context.Context, kc kubernetes.Interface) (string, error) {
	return GatewayAddress(ctx, kc, Namespace+"/"+EastWestGateway)
}

// GatewayAddress is the LoadBalancer address (IP, else host name) of the
// Service ref (namespace/name); empty while it is pending.
func GatewayAddress(ctx context.Context, kc kubernetes.Interface, ref string) (string, error) {
	ns, name, _ := strings.Cut(ref, "/")
	svc, err := kc.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", reason.Wrap(fmt.Errorf("no Service %s", ref), reason.IstioNotInstalled)
	}
	if err != nil {
		return "", err
	}
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP != "" {
			return in.IP, nil
		}
		if in.Hostname != "" {
			return in.Hostname, nil
		}
	}
	return "", nil
}

// WaitReady waits until istiod and the east-west gateway are available and
// the gateway's LoadBalancer has an address, and returns that address. It
// reports each new state through report, and gives up at once, naming the
// Services, when the LoadBalancer is pending because another one holds its
// ports, instead of hanging until the deadline.
// Without a gateway (a single-network mesh) it waits for istiod alone and
// returns "".
func WaitReady(ctx context.Context, kc kubernetes.Interface, rev string, gateway bool, report func(string)) (string, error) {
	last := ""
	for {
		waiting, err := notReady(ctx, kc, rev, gateway)
		if err != nil {
			return "", err
		}
		addr := ""
		if gateway {
			if addr, err = EastWestAddress(ctx, kc); err != nil {
				return "", err
			}
		}
		if gateway && addr == "" {
			held, err := PortConflicts(ctx, kc)
			if err != nil {
				return "", err
			}
			if len(held) > 0 {
				return "", fmt.Errorf("%w: %s: %s", ErrPortConflict, strings.Join(held, "; "), PortConflictFix)
			}
			waiting = append(waiting, fmt.Sprintf("Service %s/%s has no LoadBalancer address yet", Namespace, EastWestGateway))
		}
		if len(waiting) == 0 {
			return addr, nil
		}
		if now := strings.Join(waiting, "; "); now != last {
			report("waiting: " + now)
			last = now
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("istio not ready: %s: %w (kubectl -n %s get pods,svc shows why)", last, ctx.Err(), Namespace)
		case <-time.After(2 * time.Second):
		}
	}
}

// notReady describes the deployments in readyDeployments that are not
// available yet.
func notReady(ctx context.Context, kc kubernetes.Interface, rev string, gateway bool) ([]string, error) {
	var out []string
	for _, name := range readyDeployments(rev, gateway) {
		d, err := kc.AppsV1().Deployments(Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, reason.Wrap(fmt.Errorf("no Deployment %s/%s", Namespace, name), reason.IstioNotInstalled)
		}
		if err != nil {
			return nil, err
		}
		if !available(d) {
			out = append(out, fmt.Sprintf("Deployment %s/%s %d/%d available", Namespace, name, d.Status.AvailableReplicas, ptrOr(d.Spec.Replicas, 1)))
		}
	}
	return out, nil
}

func available(d *appsv1.Deployment) bool {
	if d.Status.ObservedGeneration < d.Generation {
		return false
	}
	return slices.ContainsFunc(d.Status.Conditions, func(c appsv1.DeploymentCondition) bool {
		return c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue
	}) && d.Status.AvailableReplicas > 0
}

func ptrOr(p *int32, d int32) int32 {
	if p == nil {
		return d
	}
	return *p
}

// IstiodReady describes the revision's istiod Deployment when it is available.
func IstiodReady(ctx context.Context, kc kubernetes.Interface, rev string) (string, error) {
	return DeploymentReady(ctx, kc, Namespace+"/"+IstiodService(rev))
}

// DeploymentReady describes the Deployment ref (namespace/name) when it is
// available.
func DeploymentReady(ctx context.Context, kc kubernetes.Interface, ref string) (string, error) {
	ns, name, _ := strings.Cut(ref, "/")
	d, err := kc.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if !available(d) {
		return "", fmt.Errorf("the Deployment %s has %d/%d available", ref, d.Status.AvailableReplicas, ptrOr(d.Spec.Replicas, 1))
	}
	return fmt.Sprintf("ready, %d replica(s) of %s", d.Status.AvailableReplicas, d.Spec.Template.Spec.Containers[0].Image), nil
}
