//! `spate.Admin`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use spate_engine::client::admin::{
    Admin as ClientAdmin, GroupDescription, NewTopic, OffsetReset, TopicInfo,
};
use spate_engine::client::config::CommonConfig;
use spate_engine::client::ClientError;

use crate::convert::{new_topic_partition, partition_dict, properties, property_value, servers};
use crate::errors::{client_error, config_error, state_error, IntoPyResult};
use crate::sync::lock;

/// A Kafka admin client: topics, their configs and partitions, groups and their offsets.
///
/// `Admin(bootstrap_servers, **config)` takes the settings every client shares
/// (`client_id`, `request_timeout_ms`, ...). Calls from several threads are serialised.
#[pyclass(module = "spate._native", frozen)]
pub struct Admin {
    inner: Mutex<Option<ClientAdmin>>,
}

#[pymethods]
impl Admin {
    #[new]
    #[pyo3(signature = (bootstrap_servers, **config))]
    fn new(
        py: Python<'_>,
        bootstrap_servers: &Bound<'_, PyAny>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Admin> {
        let mut settings = properties(py, config)?;
        settings.push(("bootstrap.servers".into(), servers(py, bootstrap_servers)?));
        let config = CommonConfig::from_properties(settings).or_raise(py)?;
        let admin = py.detach(|| ClientAdmin::connect(&config)).or_raise(py)?;
        Ok(Admin {
            inner: Mutex::new(Some(admin)),
        })
    }

    /// Creates a topic. `num_partitions` and `replication_factor` None take the broker's
    /// defaults; `config` holds topic settings (`{"retention.ms": 3600000}`). Raises
    /// TopicAlreadyExists, or KafkaError for a refused setting.
    #[pyo3(signature = (name, num_partitions=None, replication_factor=None, config=None))]
    fn create_topic(
        &self,
        py: Python<'_>,
        name: String,
        num_partitions: Option<i32>,
        replication_factor: Option<i16>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let configs: BTreeMap<String, String> = config_pairs(py, config)?.into_iter().collect();
        let topic = NewTopic {
            name,
            partitions: num_partitions.unwrap_or(-1),
            replication_factor: replication_factor.unwrap_or(-1),
            configs,
        };
        let results = self.call(py, move |admin| admin.create_topics(&[topic]))?;
        first(py, results)
    }

    /// Deletes a topic and its data. Raises TopicNotFound when there is none.
    fn delete_topic(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let results = self.call(py, move |admin| admin.delete_topics(&[name]))?;
        first(py, results)
    }

    /// The topic names, sorted; internal topics (`__consumer_offsets`) only when asked for.
    #[pyo3(signature = (internal=false))]
    fn list_topics(&self, py: Python<'_>, internal: bool) -> PyResult<Vec<String>> {
        let topics = self.call(py, |admin| admin.describe_topics(None))?;
        let mut names: Vec<String> = topics
            .into_iter()
            .filter(|topic| internal || !topic.internal)
            .map(|topic| topic.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// A topic's id and partitions: `{"name", "id", "internal", "partitions": [{"partition",
    /// "leader", "replicas", "isr"}]}`. Raises TopicNotFound.
    fn describe_topic<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyDict>> {
        let wanted = name.clone();
        let mut topics = self.call(py, move |admin| admin.describe_topics(Some(&[wanted])))?;
        match topics.pop() {
            Some(topic) => topic_dict(py, &topic),
            None => Err(crate::errors::kafka_error(
                py,
                3,
                format!("no topic named {name:?}"),
            )),
        }
    }

    /// Sets topic settings (`{"retention.ms": 60000}`) and removes others (back to the
    /// broker's defaults), leaving the rest as they are.
    #[pyo3(signature = (topic, set=None, delete=None))]
    fn alter_topic_config(
        &self,
        py: Python<'_>,
        topic: String,
        set: Option<&Bound<'_, PyDict>>,
        delete: Option<Vec<String>>,
    ) -> PyResult<()> {
        let set = config_pairs(py, set)?;
        let delete = delete.unwrap_or_default();
        self.call(py, move |admin| {
            admin.alter_topic_configs(&topic, &set, &delete)
        })
    }

    /// Grows `topic` to `total` partitions (Kafka never shrinks a topic).
    fn create_partitions(&self, py: Python<'_>, topic: String, total: i32) -> PyResult<()> {
        self.call(py, move |admin| admin.create_partitions(&topic, total))
    }

    /// The groups the cluster knows: `[{"group_id", "protocol_type", "state"}]`.
    fn list_groups<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let groups = self.call(py, ClientAdmin::list_groups)?;
        let items = groups
            .into_iter()
            .map(|group| {
                let item = PyDict::new(py);
                item.set_item("group_id", group.group_id)?;
                item.set_item("protocol_type", group.protocol_type)?;
                item.set_item("state", group.state)?;
                Ok(item)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// A group: `{"group_id", "state", "protocol_type", "assignor", "members": [{"member_id",
    /// "group_instance_id", "client_id", "client_host", "assignment": [TopicPartition]}],
    /// "offsets": [{"topic", "partition", "committed", "end", "lag"}]}`.
    fn describe_group<'py>(
        &self,
        py: Python<'py>,
        group_id: String,
    ) -> PyResult<Bound<'py, PyDict>> {
        let group = self.call(py, move |admin| admin.describe_group(&group_id))?;
        group_dict(py, &group)
    }

    /// Deletes a group without members, with its committed offsets.
    fn delete_group(&self, py: Python<'_>, group_id: String) -> PyResult<()> {
        let results = self.call(py, move |admin| admin.delete_groups(&[group_id]))?;
        first(py, results)
    }

    /// A group's committed offsets with their lag: `[{"topic", "partition", "committed",
    /// "end", "lag"}]`.
    fn list_group_offsets<'py>(
        &self,
        py: Python<'py>,
        group_id: String,
    ) -> PyResult<Bound<'py, PyList>> {
        let lags = self.call(py, move |admin| admin.list_group_offsets(&group_id))?;
        lag_list(py, &lags)
    }

    /// Moves a group's committed offsets for `topic` (its `partitions`, or all) and returns
    /// them as `{TopicPartition: offset}`. `to` is "earliest", "latest" or an offset; or give
    /// `timestamp_ms` (first record at or after it) or `shift_by` (from the committed offset).
    /// With `dry_run`, only says where they would go. Raises StateError while the group has
    /// members (stop its consumers first), as Kafka's tool does.
    #[pyo3(signature = (group_id, topic, to=None, timestamp_ms=None, shift_by=None, partitions=None, dry_run=false))]
    #[allow(clippy::too_many_arguments)]
    fn reset_group_offsets<'py>(
        &self,
        py: Python<'py>,
        group_id: String,
        topic: String,
        to: Option<&Bound<'py, PyAny>>,
        timestamp_ms: Option<i64>,
        shift_by: Option<i64>,
        partitions: Option<Vec<i32>>,
        dry_run: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let to_given = to.is_some_and(|to| !to.is_none());
        let chosen = usize::from(to_given)
            + usize::from(timestamp_ms.is_some())
            + usize::from(shift_by.is_some());
        if chosen != 1 {
            return Err(config_error(
                py,
                "give exactly one of to, timestamp_ms and shift_by",
                None,
            ));
        }
        let reset = if let Some(timestamp) = timestamp_ms {
            OffsetReset::Timestamp(timestamp)
        } else if let Some(shift) = shift_by {
            OffsetReset::ShiftBy(shift)
        } else {
            let to = to.expect("counted above");
            if let Ok(offset) = to.extract::<i64>() {
                OffsetReset::Offset(offset)
            } else {
                match to.extract::<String>()?.as_str() {
                    "earliest" => OffsetReset::Earliest,
                    "latest" => OffsetReset::Latest,
                    other => {
                        return Err(config_error(
                            py,
                            format!("to is \"earliest\", \"latest\" or an offset, not {other:?}"),
                            None,
                        ))
                    }
                }
            }
        };
        let planned = self.call(py, move |admin| {
            let planned =
                admin.plan_offset_reset(&group_id, &topic, partitions.as_deref(), reset)?;
            if !dry_run {
                admin.reset_group_offsets(&group_id, &planned)?;
            }
            Ok(planned)
        })?;
        partition_dict(py, planned)
    }

    /// The cluster: `{"cluster_id", "controller_id", "brokers": [{"id", "host", "port",
    /// "rack"}]}`.
    fn describe_cluster<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cluster = self.call(py, ClientAdmin::describe_cluster)?;
        let result = PyDict::new(py);
        result.set_item("cluster_id", cluster.cluster_id)?;
        result.set_item("controller_id", cluster.controller_id)?;
        let brokers = cluster
            .brokers
            .into_iter()
            .map(|broker| {
                let item = PyDict::new(py);
                item.set_item("id", broker.id)?;
                item.set_item("host", broker.host)?;
                item.set_item("port", broker.port)?;
                item.set_item("rack", broker.rack)?;
                Ok(item)
            })
            .collect::<PyResult<Vec<_>>>()?;
        result.set_item("brokers", brokers)?;
        Ok(result)
    }

    /// Closes the connections. Closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        py.detach(|| drop(lock(&self.inner).take()));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }
}

impl Admin {
    fn call<R, F>(&self, py: Python<'_>, call: F) -> PyResult<R>
    where
        R: Send,
        F: FnOnce(&mut ClientAdmin) -> Result<R, ClientError> + Send,
    {
        let result = py.detach(|| lock(&self.inner).as_mut().map(call));
        match result {
            Some(result) => result.or_raise(py),
            None => Err(state_error(py, "the admin client is closed")),
        }
    }
}

/// Topic settings from a dict, values as text.
fn config_pairs(
    py: Python<'_>,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<(String, String)>> {
    let Some(config) = config else {
        return Ok(Vec::new());
    };
    config
        .iter()
        .map(|(key, value)| {
            let key: String = key.extract()?;
            let value = property_value(py, &key, &value)?;
            Ok((key, value))
        })
        .collect()
}

/// The one per-item result of a call made for one item.
fn first(py: Python<'_>, results: Vec<Result<(), ClientError>>) -> PyResult<()> {
    results
        .into_iter()
        .next()
        .unwrap_or(Ok(()))
        .map_err(|error| client_error(py, error))
}

fn topic_dict<'py>(py: Python<'py>, topic: &TopicInfo) -> PyResult<Bound<'py, PyDict>> {
    let result = PyDict::new(py);
    result.set_item("name", &topic.name)?;
    result.set_item("id", topic.id.to_string())?;
    result.set_item("internal", topic.internal)?;
    let partitions = topic
        .partitions
        .iter()
        .map(|partition| {
            let item = PyDict::new(py);
            item.set_item("partition", partition.partition)?;
            item.set_item("leader", partition.leader)?;
            item.set_item("replicas", partition.replicas.clone())?;
            item.set_item("isr", partition.isr.clone())?;
            Ok(item)
        })
        .collect::<PyResult<Vec<_>>>()?;
    result.set_item("partitions", partitions)?;
    Ok(result)
}

fn lag_list<'py>(
    py: Python<'py>,
    lags: &[spate_engine::client::admin::PartitionLag],
) -> PyResult<Bound<'py, PyList>> {
    let items = lags
        .iter()
        .map(|lag| {
            let item = PyDict::new(py);
            item.set_item("topic", &lag.topic)?;
            item.set_item("partition", lag.partition)?;
            item.set_item("committed", lag.committed)?;
            item.set_item("end", lag.end)?;
            item.set_item("lag", lag.lag)?;
            Ok(item)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

fn group_dict<'py>(py: Python<'py>, group: &GroupDescription) -> PyResult<Bound<'py, PyDict>> {
    let result = PyDict::new(py);
    result.set_item("group_id", &group.group_id)?;
    result.set_item("state", &group.state)?;
    result.set_item("protocol_type", &group.protocol_type)?;
    result.set_item("assignor", &group.assignor)?;
    let members = group
        .members
        .iter()
        .map(|member| {
            let item = PyDict::new(py);
            item.set_item("member_id", &member.member_id)?;
            item.set_item("group_instance_id", &member.group_instance_id)?;
            item.set_item("client_id", &member.client_id)?;
            item.set_item("client_host", &member.client_host)?;
            let assignment = member
                .assignment
                .iter()
                .map(|(topic, partition)| new_topic_partition(py, topic, *partition))
                .collect::<PyResult<Vec<_>>>()?;
            item.set_item("assignment", assignment)?;
            Ok(item)
        })
        .collect::<PyResult<Vec<_>>>()?;
    result.set_item("members", members)?;
    result.set_item("offsets", lag_list(py, &group.offsets)?)?;
    Ok(result)
}
