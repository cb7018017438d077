// Shows the text the pack's output nodes send after a run (Release Models, Save Checkpoint, Convert Motion: what
// was done and where the file went; Video Metrics: the metrics table) on the node, in a read-only text box that
// wraps long lines, as the stock frontend does for core 'Preview Any': their executed message carries {"text": [...]}.
// The box exists from the node's creation, so the node keeps its size when the first result arrives.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const STATUS_NODES = new Set(["CoCoCoReleaseModels", "CoCoCoSaveCheckpoint", "CoCoCoConvertMotion", "CoCoCoVideoMetrics"]);
const WIDGET = "cococo_status";

function statusWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.label = "result";
    widget.serialize = false;
    widget.options = { ...widget.options, serialize: false };
    if (widget.element) {
      widget.element.readOnly = true;
      widget.element.placeholder = "shown after a run";
    }
  }
  return widget;
}

app.registerExtension({
  name: "CoCoCo.StatusText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!STATUS_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      statusWidget(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      statusWidget(this).value = (message?.text ?? []).join("\n");
      this.setDirtyCanvas?.(true, true);
    };
  },
});
