package istioinstall

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func deployment(name string, available bool) *appsv1.Deployment {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Generation: 1}}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Image: "docker.io/istio/pilot:" + EmbeddedVersion}}
	d.Status.ObservedGeneration = 1
	if available {
		d.Status.AvailableReplicas = 1
		d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue}}
	}
	return d
}

func lbService(ns, name string, port int32, ingress string) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: port}}}}
	if ingress != "" {
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ingress}}
	}
	return s
}

func TestWaitReady(t *testing.T) {
	gw := func(ingress string) runtime.Object { return lbService(Namespace, EastWestGateway, 15443, ingress) }
	tests := []struct {
		name    string
		objs    []runtime.Object
		want    string
		wantErr string
	}{
		{"ready", []runtime.Object{deployment("istiod", true), deployment(EastWestGateway, true), gw("203.0.113.7")}, "203.0.113.7", ""},
		{"a LoadBalancer holds the ports", []runtime.Object{deployment("istiod", true), deployment(EastWestGateway, true), gw(""),
			lbService(Namespace, "istio-ingressgateway", 15021, "203.0.113.8")}, "", "istio-system/istio-ingressgateway holds 15021 (status): delete that LoadBalancer"},
		{"istiod not available", []runtime.Object{deployment("istiod", false), deployment(EastWestGateway, true), gw("203.0.113.7")},
			"", "Deployment istio-system/istiod 0/1 available"},
		{"not installed", nil, "", "no Deployment istio-system/istiod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var reports []string
			got, err := WaitReady(ctx, fake.NewSimpleClientset(tt.objs...), "", true, func(s string) { reports = append(reports, s) })
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %q, %v; want an error containing %q", got, err, tt.wantErr)
			}
			if strings.Contains(tt.wantErr, "holds") && !errors.Is(err, ErrPortConflict) {
				t.Errorf("%v is not ErrPortConflict", err)
			}
		})
	}
}

// A pending gateway with no conflict is waited for, and each new state is
// reported once, until the address comes.
func TestWaitReadyReportsAndWaits(t *testing.T) {
	kc := fake.NewSimpleClientset(deployment("istiod", true), deployment(EastWestGateway, true), lbService(Namespace, EastWestGateway, 15443, ""))
	go func() {
		time.Sleep(2500 * time.Millisecond)
		s, _ := kc.CoreV1().Services(Namespace).Get(context.Background(), EastWestGateway, metav1.GetOptions{})
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "lb.example.net"}}
		kc.CoreV1().Services(Namespace).UpdateStatus(context.Background(), s, metav1.UpdateOptions{})
	}()
	var reports []string
	got, err := WaitReady(context.Background(), kc, "", true, func(s string) { reports = append(reports, s) })
	if err != nil || got != "lb.example.net" {
		t.Fatalf("got %q, %v", got, err)
	}
	if len(reports) != 1 || !strings.Contains(reports[0], "has no LoadBalancer address yet") {
		t.Errorf("reports %q, want one saying the address is pending", reports)
	}
}
