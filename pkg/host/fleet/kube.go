package fleet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
)

// WorkloadSpec is the config's workload: the cluster objects a VM joins.
func WorkloadSpec(cfg config.Config) workload.Spec {
	w := cfg.Workload
	return workload.Spec{Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Group: w.Group, Port: w.Port, PortName: w.PortName,
		Network: w.Network, ProbePath: w.Probe.Path, ProbePort: w.Probe.Port,
		ProbePeriod: int32(w.Probe.PeriodSeconds), ProbeInitialDelay: int32(w.Probe.InitialDelaySeconds),
		CertificateLifetime: w.CertificateLifetime.Duration}
}

// IstioOptions are the install's inputs from the config.
func IstioOptions(cfg config.Config) istioinstall.Options {
	return istioinstall.Options{MeshID: cfg.Istio.MeshID, ClusterName: cfg.Istio.ClusterName, Network: cfg.Istio.Network, Revision: cfg.Istio.Revision}
}

// RestConfig loads the cluster's kubeconfig, naming what to do when it is
// missing or broken.
func RestConfig(kubeconfig string) (*rest.Config, error) {
	if _, err := os.Stat(kubeconfig); errors.Is(err, fs.ErrNotExist) {
		return nil, reason.Wrap(fmt.Errorf("no kubeconfig at %s", kubeconfig), reason.ClusterNotUp)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s does not load (%w): fix the file, or point cluster.kubeconfig (--kubeconfig) at another", kubeconfig, err)
	}
	return rc, nil
}

// KubeClients are the cluster's Kubernetes and Istio clients.
func KubeClients(kubeconfig string) (workload.Clients, error) {
	rc, err := RestConfig(kubeconfig)
	if err != nil {
		return workload.Clients{}, err
	}
	// Many VMs onboard and report at once: client-go's default 5 requests/s would queue them.
	rc.QPS, rc.Burst = 50, 100
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return workload.Clients{}, err
	}
	ic, err := istioclient.NewForConfig(rc)
	if err != nil {
		return workload.Clients{}, err
	}
	return workload.Clients{Kube: kc, Istio: ic}, nil
}
