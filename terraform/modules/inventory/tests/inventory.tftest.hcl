# The provider is mocked: no file is written, but its planned content is
# checked through the module's outputs and the local_file resource.
mock_provider "local" {}

variables {
  environment = "production"
  vars        = { ansible_user = "tongxin-admin" }
  sites = {
    dc1 = {
      vars = { tongxin_lb_vip = "10.1.0.5" }
      hosts = {
        lb        = [{ name = "tongxin-dc1-lb-01", address = "10.1.0.11" }, { name = "tongxin-dc1-lb-02", address = "10.1.0.12" }]
        appliance = [{ name = "tongxin-dc1-appliance-01", address = "10.1.0.21" }]
        redis     = [{ name = "tongxin-dc1-redis-01", address = "10.1.0.31" }]
      }
    }
    dc2 = {
      hosts = {
        appliance = [{ name = "tongxin-dc2-appliance-01", address = "10.2.0.21" }]
        database = [{
          name        = "tongxin-dc2-database-01"
          address     = "10.2.0.41"
          data_volume = { id = "3f6c1a52-9d7e-4b0a-8c21-5e4f7a9b0d13", device = "/dev/vdb", size_gb = 500 }
        }]
      }
    }
    dr = {
      role         = "dr"
      architecture = "aarch64"
      hosts = {
        kafka      = [{ name = "tongxin-dr-kafka-01", address = "10.3.0.51" }]
        monitoring = [{ name = "tongxin-dr-monitoring-01", address = "10.3.0.61" }]
      }
    }
  }
}

run "renders_site_and_component_groups" {
  command = plan

  assert {
    condition     = toset(keys(yamldecode(output.content).all.children)) == toset(["dc1", "dc2", "dr", "lb", "appliance", "redis", "kafka", "database", "monitoring"])
    error_message = "The inventory must have exactly the site groups and the six component groups."
  }

  assert {
    condition     = toset(keys(yamldecode(output.content).all.children.dc1.hosts)) == toset(["tongxin-dc1-appliance-01", "tongxin-dc1-lb-01", "tongxin-dc1-lb-02", "tongxin-dc1-redis-01"])
    error_message = "dc1 must list its four hosts."
  }

  assert {
    condition     = toset(keys(yamldecode(output.content).all.children.lb.hosts)) == toset(["tongxin-dc1-lb-01", "tongxin-dc1-lb-02"])
    error_message = "The lb group must list both load balancers."
  }

  assert {
    condition     = toset(keys(yamldecode(output.content).all.children.appliance.hosts)) == toset(["tongxin-dc1-appliance-01", "tongxin-dc2-appliance-01"])
    error_message = "The appliance group must span the sites."
  }

  assert {
    condition     = yamldecode(output.content).all.children.dc1.hosts["tongxin-dc1-lb-02"] == { ansible_host = "10.1.0.12", tongxin_address = "10.1.0.12", tongxin_component = "lb", tongxin_node_index = "2" }
    error_message = "A host carries ansible_host, its address, component and index."
  }

  assert {
    condition     = yamldecode(output.content).all.children.dr.vars == { tongxin_site = "dr", tongxin_site_role = "dr", tongxin_architecture = "aarch64" }
    error_message = "The dr group must carry its role and architecture."
  }

  assert {
    condition     = yamldecode(output.content).all.children.dc1.vars.tongxin_lb_vip == "10.1.0.5" && yamldecode(output.content).all.children.dc1.vars.tongxin_site_role == "active"
    error_message = "Site vars must be merged into the site group."
  }

  assert {
    condition     = yamldecode(output.content).all.vars == { ansible_user = "tongxin-admin", tongxin_environment = "production" }
    error_message = "The all group must carry the given vars and the environment."
  }

  assert {
    condition     = output.groups.redis == tolist(["tongxin-dc1-redis-01"]) && output.groups.dc2 == tolist(["tongxin-dc2-appliance-01", "tongxin-dc2-database-01"])
    error_message = "The groups output must match the inventory."
  }

  assert {
    condition     = startswith(output.content, "# Ansible inventory of the production environment") && strcontains(output.content, "\n    dc1:\n") && !strcontains(output.content, "\"dc1\":")
    error_message = "The YAML must have the header comment and unquoted plain keys."
  }
}

run "data_volume_becomes_a_host_var" {
  command = plan

  assert {
    condition     = yamldecode(output.content).all.children.dc2.hosts["tongxin-dc2-database-01"].tongxin_data_volume == { id = "3f6c1a52-9d7e-4b0a-8c21-5e4f7a9b0d13", device = "/dev/vdb", size_gb = 500 }
    error_message = "A host with a data volume carries tongxin_data_volume { id, device, size_gb }."
  }

  assert {
    condition     = strcontains(output.content, "\n          tongxin_data_volume:\n            device: \"/dev/vdb\"\n            id: \"3f6c1a52-9d7e-4b0a-8c21-5e4f7a9b0d13\"\n            size_gb: 500\n")
    error_message = "tongxin_data_volume is a plain YAML mapping (unquoted keys, size_gb a number)."
  }

  assert {
    condition = alltrue(flatten([
      for s, g in yamldecode(output.content).all.children : [
        for n, v in g.hosts : !contains(keys(v), "tongxin_data_volume") if n != "tongxin-dc2-database-01" && v != null
      ] if contains(["dc1", "dc2", "dr"], s)
    ]))
    error_message = "Hosts without a data volume get no tongxin_data_volume."
  }

  assert {
    condition     = output.hosts["tongxin-dc2-database-01"].vars.tongxin_data_volume.size_gb == 500 && !contains(keys(output.hosts["tongxin-dr-kafka-01"].vars), "tongxin_data_volume")
    error_message = "The hosts output carries the same variables."
  }
}

run "rejects_data_volume_without_id" {
  command = plan

  variables {
    sites = {
      dc1 = { hosts = { kafka = [{ name = "k-01", address = "192.0.2.1", data_volume = { id = " ", size_gb = 200 } }] } }
    }
  }

  expect_failures = [var.sites]
}

run "empty_component_groups_are_still_present" {
  command = plan

  variables {
    sites = {
      dc1 = { hosts = { appliance = [{ name = "a-01", address = "192.0.2.1" }] } }
    }
  }

  assert {
    condition     = yamldecode(output.content).all.children.kafka.hosts == {}
    error_message = "An empty component group must be an empty mapping."
  }

  assert {
    condition     = length(output.groups.lb) == 0 && output.groups.appliance == tolist(["a-01"])
    error_message = "Only the appliance group has a host."
  }
}

run "writes_to_repo_inventories_by_default" {
  command = plan

  assert {
    condition     = length(local_file.inventory) == 1 && endswith(local_file.inventory[0].filename, "/../../../inventories/production/hosts.yml")
    error_message = "By default the inventory is written to inventories/<environment>/hosts.yml at the repository root."
  }

  assert {
    condition     = local_file.inventory[0].content == output.content && local_file.inventory[0].file_permission == "0644"
    error_message = "The file must hold the rendered inventory, mode 0644."
  }
}

run "custom_path_and_render_only" {
  command = plan

  variables {
    output_path = "/tmp/inventory-test/hosts.yml"
    write_file  = false
  }

  assert {
    condition     = output.path == "/tmp/inventory-test/hosts.yml" && length(local_file.inventory) == 0
    error_message = "write_file = false must only render."
  }
}

run "podman_connection_for_the_lab" {
  command = plan

  variables {
    environment = "lab"
    connection  = "podman"
  }

  assert {
    condition     = yamldecode(output.content).all.vars.ansible_connection == "podman"
    error_message = "The podman connection must be set for all hosts."
  }

  assert {
    condition     = yamldecode(output.content).all.children.dr.hosts["tongxin-dr-kafka-01"].ansible_host == "tongxin-dr-kafka-01" && yamldecode(output.content).all.children.dr.hosts["tongxin-dr-kafka-01"].tongxin_address == "10.3.0.51"
    error_message = "With podman, ansible_host is the container name and the address stays in tongxin_address."
  }

  assert {
    condition     = endswith(output.path, "/inventories/lab/hosts.yml")
    error_message = "The lab inventory goes to inventories/lab/hosts.yml."
  }
}

run "yaml_words_stay_quoted" {
  command = plan

  variables {
    vars = { yes = "1", on = "2", plain_key = "3" }
  }

  assert {
    condition     = strcontains(output.content, "\"yes\": \"1\"") && strcontains(output.content, "\"on\": \"2\"") && strcontains(output.content, " plain_key: \"3\"")
    error_message = "Keys YAML 1.1 reads as booleans must stay quoted; others are unquoted."
  }
}

run "rejects_bad_site_name" {
  command = plan

  variables {
    sites = { "DC-1" = { hosts = {} } }
  }

  expect_failures = [var.sites]
}

run "rejects_bad_role" {
  command = plan

  variables {
    sites = { dc1 = { role = "primary", hosts = {} } }
  }

  expect_failures = [var.sites]
}

run "rejects_unknown_component" {
  command = plan

  variables {
    sites = { dc1 = { hosts = { cache = [{ name = "x-01", address = "192.0.2.1" }] } } }
  }

  expect_failures = [var.sites]
}

run "rejects_duplicate_host_names" {
  command = plan

  variables {
    sites = {
      dc1 = { hosts = { lb = [{ name = "same", address = "192.0.2.1" }] } }
      dc2 = { hosts = { lb = [{ name = "same", address = "192.0.2.2" }] } }
    }
  }

  expect_failures = [var.sites]
}

run "rejects_bad_variable_name" {
  command = plan

  variables {
    vars = { "ansible-user" = "x" }
  }

  expect_failures = [var.vars]
}

run "rejects_bad_connection" {
  command = plan

  variables {
    connection = "winrm"
  }

  expect_failures = [var.connection]
}

run "rejects_bad_environment" {
  command = plan

  variables {
    environment = "Production!"
  }

  expect_failures = [var.environment]
}

# A small lab combines components on one host: `also` puts the host into
# other component groups too, while tongxin_component stays its own.
run "also_joins_other_component_groups" {
  command = plan

  variables {
    sites = {
      dc1 = {
        hosts = {
          appliance = [{ name = "lab-dc1-appliance-01", address = "10.89.101.11", also = ["lb", "redis", "kafka"] }]
          database  = [{ name = "lab-dc1-database-01", address = "10.89.101.12" }]
        }
      }
    }
  }

  assert {
    condition     = output.groups.lb == tolist(["lab-dc1-appliance-01"]) && output.groups.redis == tolist(["lab-dc1-appliance-01"]) && output.groups.kafka == tolist(["lab-dc1-appliance-01"])
    error_message = "A host must join every component group its `also` names."
  }

  assert {
    condition     = output.groups.appliance == tolist(["lab-dc1-appliance-01"]) && output.groups.database == tolist(["lab-dc1-database-01"]) && length(output.groups.monitoring) == 0
    error_message = "`also` must not add the host to groups it does not name, nor move other hosts."
  }

  assert {
    condition     = yamldecode(output.content).all.children.dc1.hosts["lab-dc1-appliance-01"].tongxin_component == "appliance"
    error_message = "tongxin_component stays the host's own component."
  }
}

run "also_rejects_unknown_components" {
  command = plan

  variables {
    sites = {
      dc1 = {
        hosts = {
          appliance = [{ name = "lab-dc1-appliance-01", address = "10.89.101.11", also = ["cache"] }]
        }
      }
    }
  }

  expect_failures = [var.sites]
}

run "rejects_the_service_account_as_ansible_user" {
  command = plan

  variables {
    vars = { ansible_user = "tongxin" }
  }

  expect_failures = [var.vars]
}
