package fleetmode

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/reason"
)

// UseCluster has f read the VMs' records and the agent CA where fleet mode
// keeps them, in the cluster: a workstation with no state of these VMs (a
// second engineer's, a new laptop) reaches their agents as a person, with
// a client certificate the cluster's CA signs, kept in its own state
// directory. It only reads the store: a cluster with no agent CA yet is an
// error naming the command that puts one there (status, verify, doctor and
// logs must not mint a CA no agent pins).
func UseCluster(ctx context.Context, f *fleet.Fleet) error {
	clients, err := fleet.KubeClients(f.Site.Kubeconfig())
	if err != nil {
		return err
	}
	ns := fleetstore.DefaultNamespace
	_, err = clients.Kube.CoreV1().Secrets(ns).Get(ctx, fleetstore.CASecret, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return reason.Wrap(fmt.Errorf("fleet mode is on, but the cluster holds no agent CA (Secret %s/%s)", ns, fleetstore.CASecret), reason.NoFleetStore)
	case err != nil:
		return reason.Wrap(fmt.Errorf("the agent CA (Secret %s/%s): %w", ns, fleetstore.CASecret, err), reason.ClusterUnreachable)
	}
	store := fleetstore.New(ctx, clients.Kube, ns, f.Config.Workload.Namespace, fleetstore.WithClient(f.State.ClientCert))
	f.Records = clusterRecords{Store: store, ctx: ctx, kube: clients.Kube, ns: ns, vmNS: f.Config.Workload.Namespace}
	return nil
}

// clusterRecords is the cluster's store as doctor reads it: the hosts
// block generated for each VM too.
type clusterRecords struct {
	*fleetstore.Store
	ctx      context.Context
	kube     kubernetes.Interface
	ns, vmNS string
}

var _ fleet.HostsRecords = clusterRecords{}

func (c clusterRecords) Hosts(vm string) ([]byte, error) {
	sec, err := c.kube.CoreV1().Secrets(c.ns).Get(c.ctx, fleetstore.RecordName(c.vmNS, vm), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return sec.Data["hosts"], nil
}
